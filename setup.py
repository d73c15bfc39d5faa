"""pip install for the Python package (python/sparsemoe), offline, with Debian's setuptools:

    python3 -m venv --system-site-packages .venv      # numpy and torch from Debian
    .venv/bin/pip install --no-build-isolation .

The extension is built by the project's own CMake (in build/, or $SPARSEMOE_BUILD_DIR, so after
scripts/setup.sh only the extension is left to build), then installed with the shared library
next to it (the extension finds it through its $ORIGIN run path)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def version():
    for line in (ROOT / "CMakeLists.txt").read_text().splitlines():
        if line.startswith("project(sparsemoe VERSION"):
            return line.split()[2]
    raise RuntimeError("setup.py: no project version in CMakeLists.txt")


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = Path(os.environ.get("SPARSEMOE_BUILD_DIR", ROOT / "build")).resolve()
        python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-DSPARSEMOE_PYTHON=ON",
                     f"-DPython_EXECUTABLE={python}"]
        if not (build / "CMakeCache.txt").exists():
            configure += ["-DCMAKE_BUILD_TYPE=Release"]
            if shutil.which("ninja"):
                configure += ["-G", "Ninja"]
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "sparsemoe_python", "-j",
                        str(os.cpu_count() or 1)], check=True)
        stage = Path(self.build_temp).resolve() / "stage"
        shutil.rmtree(stage, ignore_errors=True)
        subprocess.run(["cmake", "--install", str(build), "--component", "python", "--prefix",
                        str(stage)], check=True)
        dest = Path(self.get_ext_fullpath(ext.name)).parent
        dest.mkdir(parents=True, exist_ok=True)
        # A wheel stores no symbolic links: the library goes in once, under its soname, which is
        # the name the extension asks for (libsparsemoe.so.0 -> libsparsemoe.so.0.1.0).
        files = list((stage / "sparsemoe").iterdir())
        targets = {f.resolve() for f in files if f.is_symlink()}
        for old in dest.glob("libsparsemoe.so*"):  # from an earlier build in the same folder
            old.unlink()
        for f in files:
            if f.is_symlink() or f.resolve() not in targets:
                shutil.copy2(f, dest / f.name)


setup(
    name="sparsemoe",
    version=version(),
    description="Sparsely-activated Mixture-of-Experts layers on a C++ engine",
    license="Apache-2.0",
    packages=["sparsemoe"],
    package_dir={"": "python"},
    ext_modules=[Extension("sparsemoe._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["numpy"],
    # setuptools' own scratch space: build/ is CMake's.
    options={"build": {"build_base": "build/setuptools"}, "egg_info": {"egg_base": "build"}},
)
