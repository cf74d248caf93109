"""Before a URL is opened: does fsspec know its protocol, and is the package that serves it installed?

fsspec itself answers a missing back-end with a bare ``ImportError`` (``Install s3fs to access
S3``) and an unknown protocol with a ``ValueError``; :func:`check_url_backend` turns these into
:class:`~lpldstore.errors.MissingDependencyError` naming what to ``pip install`` and
:class:`~lpldstore.errors.ConfigError`, which both command lines print as one line.
"""

from __future__ import annotations

from lpldstore.errors import ConfigError, MissingDependencyError

__all__ = ["check_url_backend", "install_hint"]

# Protocols whose back-end an lpldstore extra installs; the rest name their own package.
_EXTRAS = {"http": "'lpldstore[http]'", "https": "'lpldstore[http]'"}


def _protocols(url: str) -> list[str]:
    # A chained URL ("zip::https://host/x.zip", "simplecache::s3://b/x") uses every protocol in it.
    return [part.partition("://")[0] for part in url.split("::") if part]


def install_hint(protocol: str) -> str:
    """What to install for ``protocol`` (``pip install s3fs``, ``pip install 'lpldstore[http]'``)."""
    from fsspec.registry import known_implementations

    if protocol in _EXTRAS:
        return f"pip install {_EXTRAS[protocol]}"
    spec = known_implementations.get(protocol, {})
    package = str(spec.get("class", protocol)).split(".")[0]
    return f"pip install {package.replace('_', '-') if package == 'huggingface_hub' else package}"


def check_url_backend(url: str) -> None:
    """Raise if fsspec cannot open ``url``'s protocols here; do nothing (and open nothing) otherwise."""
    import fsspec

    for protocol in _protocols(url):
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise ConfigError(
                f"Expected a URL whose protocol fsspec knows (file, http, https, s3, gs, hf, memory, ...). "
                f"Got {protocol!r} in {url!r}. Check the URL, or install the fsspec back-end that provides it."
            ) from None
        except ImportError as exc:
            raise MissingDependencyError(
                f"{protocol}:// URLs need an fsspec back-end that is not installed ({exc}): {install_hint(protocol)}"
            ) from None
