"""The wheels a GPU machine without a package registry needs to run bench/gpu_check.sh.

Usage (here, where PyPI answers):  .venv/bin/python bench/gpu_wheels.py [--out .whl]
then on the GPU machine:             bash bench/gpu_check.sh   (carrying .whl and .hub)

The lent H200 image has CUDA torch, numpy, pyarrow, pandas, scikit-learn, Pillow, aiohttp and
more (.library/device/KINDS.md), but an older transformers and neither datasets nor pydantic.
This fetches, at the versions of requirements.lock (the ones the suite passed with), what
productvlm imports on the GPU check's path and what those need in turn (their metadata's
Requires-Dist, read for CPython 3.12 on x86-64 Linux), leaving out what the image already
holds among the big compiled packages (:data:`ON_THE_IMAGE`), and checks that the folder fits
what a device call may carry (64 MiB with the working tree). bitsandbytes (QLoRA) comes with
the native library of the image's CUDA only (3.4 MB of its 43). Packages the check never
imports (wandb: runs use report_to none; the serving stack; Ray) are not fetched.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
KIT_HUB = ROOT.parent / "shared" / "phi3v-conformance" / "hub"
#: what productvlm imports on the GPU check's path (train, predict, audit, the demo)
NEEDED = ("transformers", "peft", "accelerate", "datasets", "pydantic", "typer", "rich",
          "httpx", "pyyaml", "num2words")
#: on the H200 image already (KINDS.md), and large or compiled: never carried (small pure-Python
#: needs such as typing-extensions, packaging, filelock and tqdm are carried at the lock's
#: versions, as the image's may be older than pydantic or transformers ask)
ON_THE_IMAGE = {"torch", "numpy", "pyarrow", "pandas", "scipy", "scikit-learn", "matplotlib",
                "pillow", "triton", "psutil", "pyyaml", "safetensors", "xxhash", "aiohttp",
                "yarl", "multidict", "frozenlist", "propcache", "aiosignal", "markupsafe",
                "jinja2", "sympy", "networkx", "mpmath", "setuptools",
                "requests", "urllib3", "certifi",
                "charset-normalizer", "six", "python-dateutil", "pytz", "tzdata",
                "contourpy", "cycler", "fonttools", "kiwisolver", "pyparsing", "joblib",
                "threadpoolctl", "docopt"}
#: the machine's Python
ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
       "platform_machine": "x86_64", "sys_platform": "linux", "platform_system": "Linux",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
LIMIT_MB = 56  # of the 64 MiB a call carries, the rest for the working tree
#: what the lock does not hold (pyproject's [gpu] extra, and Liger's kernels, which are
#: optional): the versions fetched
EXTRAS = {"bitsandbytes": "0.50.2", "liger-kernel": "0.8.5"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    """name -> version, from requirements.lock."""
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", (ROOT / "requirements.lock")
                      .read_text(), flags=re.M)
    return {norm(n): v for n, v in pins}


def download(name: str, version: str, out: Path) -> Path:
    before = set(out.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(out),
           *[a for p in PLATFORMS for a in ("--platform", p)], f"{name}=={version}"]
    subprocess.run(cmd, check=True)
    new = set(out.glob("*.whl")) - before
    found = [w for w in out.glob("*.whl") if norm(w.name.split("-")[0]) == norm(name)]
    return (sorted(new) or found)[0]


def requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    names = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate({**ENV, "extra": ""}):
                names.append(norm(req.name))
    return names


def trimmed(wheel: Path, cuda: str) -> Path:
    """``wheel`` (bitsandbytes: one native library per CUDA, ROCm and XPU version, 43 MB)
    rewritten with the CPU library and CUDA ``cuda``'s (e.g. "130") only, the RECORD too."""
    keep = re.compile(rf"libbitsandbytes_(cpu|cuda{cuda})\.so$")
    drop = re.compile(r"libbitsandbytes_\w+\.so$")
    small = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if drop.search(item.filename) and not keep.search(item.filename):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                data = "\n".join(line for line in data.decode().splitlines()
                                 if not (drop.search(line.split(",")[0])
                                         and not keep.search(line.split(",")[0]))).encode()
            dst.writestr(item, data)
    small.replace(wheel)
    return wheel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".whl")
    ap.add_argument("--qlora-cuda", default="130", help="bitsandbytes for QLoRA, with this CUDA "
                    "version's library only (the H200 image's torch is cu130); none: leave "
                    "QLoRA out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pins, done, todo = locked(), {}, [norm(n) for n in NEEDED]
    pins.update({k: v for k, v in EXTRAS.items() if k not in pins})
    todo.append("liger-kernel")
    if args.qlora_cuda != "none":
        todo.append("bitsandbytes")
    while todo:
        name = todo.pop()
        if name in done or name in ON_THE_IMAGE:
            continue
        if name not in pins:
            sys.exit(f"{name}: not in requirements.lock; add it to ON_THE_IMAGE or the lock")
        done[name] = download(name, pins[name], args.out)
        if name == "bitsandbytes":
            done[name] = trimmed(done[name], args.qlora_cuda)
        todo += requires(done[name])
    keep = {w.name for w in done.values()}
    for stale in args.out.glob("*.whl"):  # one version of each: two stop the install
        if stale.name not in keep:
            stale.unlink()
    size = sum(w.stat().st_size for w in done.values()) / 2**20
    for _, wheel in sorted(done.items()):
        print(f"{wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    print(f"{len(done)} wheels, {size:.1f} MiB in {args.out} (limit {LIMIT_MB} MiB)")
    if size > LIMIT_MB:
        sys.exit(f"{args.out}: {size:.1f} MiB is more than a device call carries")
    if KIT_HUB.is_dir():  # the model's config and tokenizer: ../shared does not travel
        hub = ROOT / ".hub"
        hub.mkdir(exist_ok=True)
        for f in KIT_HUB.iterdir():
            if f.is_file() and f.suffix in (".json", ".model", ".txt"):
                shutil.copy2(f, hub / f.name)
        print(f"{hub}: the Hub's config and tokenizer files from {KIT_HUB}; carry .whl and "
              ".hub: bash bench/gpu_check.sh")
    else:
        print(f"{KIT_HUB} is absent: give gpu_check.sh the Hub's config.json and tokenizer "
              "files with HUB=DIR")


if __name__ == "__main__":
    main()
