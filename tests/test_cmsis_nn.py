"""CMSIS-NN for real (issue 22, part 1): fedtiny builds against Arm's CMSIS-NN v7.0.0 and current
main (the archives in ../shared/third_party/; FEDTINY_CMSIS_NN_ARCHIVES names another folder)
and computes the same bytes as with its bundled kernels, on the host and on the emulated M4.

Oracle: the other build. `device_trainer_c/tests/nn_check_main.c` digests fedtiny's int8 kernel
path (ft_layer_forward_s8 on random convolution, depthwise, fully connected and pooling layers),
a model's int8 forward and a training run; the bundled build's digests must equal each CMSIS-NN
build's, line by line. The Python kernel tests also run against an extension built on each tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.cortex_m import needs_cortex_m

ROOT = Path(__file__).resolve().parents[1]
C_ROOT = ROOT / "device_trainer_c"
TREES = {"v7.0.0": "cmsis-nn-v7.0.0.tar.gz", "main-99f736a": "cmsis-nn-99f736a.tar.gz"}


def archive_dir() -> Path | None:
    for p in (os.environ.get("FEDTINY_CMSIS_NN_ARCHIVES"), ROOT.parent / "shared" / "third_party",
              Path("/work/shared/third_party")):
        if p and all((Path(p) / a).exists() for a in TREES.values()):
            return Path(p)
    return None


pytestmark = [pytest.mark.skipif(archive_dir() is None, reason="the CMSIS-NN archives of ../shared/third_party/ "
                                 "are not here (FEDTINY_CMSIS_NN_ARCHIVES names their folder)"),
              pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")]
CASES = 20000


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {"bundled": None}
    base = tmp_path_factory.mktemp("cmsis")
    for name, archive in TREES.items():
        with tarfile.open(archive_dir() / archive) as tar:
            tar.extractall(base, filter="data")
        out[name] = base / archive.removesuffix(".tar.gz")
    return out


def build(build: Path, tree: Path | None, *args: str, targets: tuple[str, ...] = ()) -> None:
    cfg = ["cmake", "-S", str(C_ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *args]
    if tree is not None:
        cfg.append(f"-DFEDTINY_CMSIS_NN_DIR={tree}")
    subprocess.run(cfg, check=True, capture_output=True, text=True)
    proc = subprocess.run(["cmake", "--build", str(build), "-j", "2", *[a for t in targets for a in ("--target", t)]],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A real converter's model imported (int8 prefix: PAD+depthwise, depthwise, 1x1 conv, MEAN)."""
    from fedtiny.models.tflite import import_tflite
    from fedtiny.trainer.model_format import to_bytes

    spec, _ = import_tflite(ROOT / "tests" / "data" / "digits_litert_int8.tflite", 2)
    path = tmp_path_factory.mktemp("model") / "m.ftny"
    path.write_bytes(to_bytes(spec))
    return path


@pytest.fixture(scope="module")
def host(trees, model_file, tmp_path_factory) -> dict[str, str]:
    out = {}
    for name, tree in trees.items():
        b = tmp_path_factory.mktemp(f"host-{name}")
        build(b, tree, "-DFEDTINY_BUILD_TESTS=ON", targets=("ft_unit_tests", "ft_nn_check"))
        unit = subprocess.run([str(b / "ft_unit_tests")], capture_output=True, text=True, timeout=600)
        assert unit.returncode == 0 and " 0 failed" in unit.stdout, (name, unit.stdout[-2000:])
        run = subprocess.run([str(b / "ft_nn_check"), str(CASES), str(model_file)], capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0 and run.stdout.endswith("END\n"), (name, run.stdout, run.stderr)
        out[name] = run.stdout
    return out


def test_the_cmsis_nn_builds_compute_the_bundled_builds_bytes_on_the_host(host):
    lines = host["bundled"].splitlines()
    assert [ln.split()[0] for ln in lines] == ["conv", "depthwise", "fc", "avgpool", "fc_tensor", "forward", "train", "END"]
    assert all(int(ln.split()[2]) > CASES // 10 for ln in lines[:5]), lines  # cases that ran, per kernel
    for name in TREES:
        assert host[name] == host["bundled"], name


@needs_cortex_m
def test_the_cmsis_nn_builds_compute_the_bundled_builds_bytes_on_the_emulated_m4(trees, model_file, tmp_path_factory):
    import struct

    model = model_file.read_bytes()
    job = tmp_path_factory.mktemp("job") / "job.bin"
    job.write_bytes(struct.pack("<4sII", b"FTNC", 2000, len(model)) + model)
    outs = {}
    for name, tree in trees.items():
        b = tmp_path_factory.mktemp(f"m4-{name}")
        build(b, tree, f"-DCMAKE_TOOLCHAIN_FILE={C_ROOT / 'cmake/arm-none-eabi-cortex-m4.cmake'}",
              targets=("ft_nn_check_mps2", "ft_board_mps2", "ft_twin_mps2"))
        proc = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial",
                               "none", "-semihosting-config", "enable=on,target=native",
                               "-kernel", str(b / "ft_nn_check_mps2.elf"), "-device", f"loader,file={job},addr=0x21000000"],
                              capture_output=True, text=True, timeout=600)
        text = proc.stdout + proc.stderr  # semihosting console output arrives on QEMU's stderr
        lines = [ln for ln in text.splitlines() if ln.split()[:1] and ln.split()[0] in
                 ("conv", "depthwise", "fc", "avgpool", "fc_tensor", "forward", "train", "END", "ERROR")]
        assert proc.returncode == 0 and lines[-1:] == ["END"], (name, text[-1000:])
        outs[name] = lines
    assert len(outs["bundled"]) == 8 and not any(ln.startswith("ERROR") for ln in outs["bundled"])
    for name in TREES:
        assert outs[name] == outs["bundled"], name


_BOOT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("fedtiny._core", sys.argv[1])
core = importlib.util.module_from_spec(spec)
spec.loader.exec_module(core)
import fedtiny
sys.modules["fedtiny._core"] = fedtiny._core = core
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[2:]]))
"""


@pytest.mark.parametrize("name", list(TREES))
def test_the_python_kernel_tests_pass_on_an_extension_built_against_cmsis_nn(trees, name, tmp_path):
    pybind11 = pytest.importorskip("pybind11")
    b = tmp_path / "ext"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(b), "-DCMAKE_BUILD_TYPE=Release",
                    f"-DFEDTINY_CMSIS_NN_DIR={trees[name]}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                    f"-DPython_EXECUTABLE={sys.executable}"], check=True, capture_output=True)
    proc = subprocess.run(["cmake", "--build", str(b), "-j", "2", "--target", "_core"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    ext = next(b.glob("_core*.so"))
    check = subprocess.run([sys.executable, "-c", "import sys\n" + _BOOT.replace("import pytest", "print(core.__file__)\nimport pytest"),
                            str(ext), str(ROOT / "tests" / "test_kernels.py")],
                           capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]
    assert str(ext) in check.stdout and " passed" in check.stdout


def test_a_cmsis_nn_older_than_v7_is_refused_with_the_reason(trees, tmp_path):
    old = tmp_path / "cmsis-nn-old"
    shutil.copytree(trees["v7.0.0"], old)
    header = old / "Include" / "arm_nnfunctions.h"
    header.write_text(header.read_text().replace("const cmsis_nn_dims *upscale_dims,", ""))
    proc = subprocess.run(["cmake", "-S", str(C_ROOT), "-B", str(tmp_path / "b"), f"-DFEDTINY_CMSIS_NN_DIR={old}"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "needs CMSIS-NN v7.0.0 or later" in proc.stderr


@needs_cortex_m
def test_the_kernel_benchmark_prints_its_table(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels_m4.py"), "--cmsis-nn",
                           str(archive_dir() / TREES["v7.0.0"])], capture_output=True, text=True, cwd=tmp_path,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    int8_table, f32_table = proc.stdout.split("\n\n")
    rows = [ln.split() for ln in int8_table.splitlines()[2:]]
    assert [r[0].split("_")[0] for r in rows] == ["fc", "conv", "conv", "conv", "depthwise", "depthwise", "depthwise", "depthwise", "depthwise", "avgpool"]
    assert all(len(r) == 4 and r[3].endswith("x") and float(r[1]) > 0 and float(r[2]) > 0 for r in rows), rows
    rows = [ln.split() for ln in f32_table.splitlines()[2:]]
    assert [r[0].split("_")[0] for r in rows] == ["fc", "fc", "conv", "conv", "depthwise"], rows
    assert all(len(r) == 3 and float(r[1]) > 0 and float(r[2]) > 0 for r in rows), rows
