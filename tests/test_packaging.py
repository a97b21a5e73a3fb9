"""The package as a user installs it: a wheel built without packaging warnings, installed (not editable) in
a fresh virtual environment, and the demo's whole prediction path run from it, its data files included."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_demo_prediction_path(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    output = built.stdout + built.stderr
    assert "absent from" not in output and "is not a package" not in output, output[-3000:]
    wheel = next((tmp_path / "dist").glob("itm-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "itm/py.typed" in names and any(n.endswith(".dist-info/LICENSE") or "licenses/LICENSE" in n for n in names)

    # A fresh environment that borrows this one's dependencies (TensorFlow is large) but not its itm.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # its .pth files are not read
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]

    env = {**os.environ, "ITM_CACHE_DIR": str(tmp_path / "cache"), "ITM_DATA_DIR": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    work = tmp_path / "work"  # not the repository, whose itm/ would shadow the installed one
    work.mkdir()

    def itm(*args):
        return subprocess.run([str(python), "-m", "itm", *args], cwd=work, env=env, capture_output=True, text=True)

    where = subprocess.run([str(python), "-c", "import itm; print(itm.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    r = itm("train", "--epochs", "1", "--limit", "16", "--image-size", "32", "--seed", "0", "--output-dir", "run")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "bundled DEMO dataset" in r.stdout  # generated from the wheel's own caption embeddings
    demo = tmp_path / "cache" / "demo-v2"
    name, caption, _ = (demo / "flickr8k.TestImages.txt").read_text().splitlines()[0].split("\t")
    r = itm("predict", "--run", "run", "--image", str(demo / "flickr8k-resised" / name), "--caption", caption)
    assert r.returncode == 0 and f'Caption: "{caption}"' in r.stdout, r.stderr[-2000:]
    page = subprocess.run([str(python), "-c",
                           "from fastapi.testclient import TestClient\n"
                           "from itm import Matcher\n"
                           "from itm.serving.server import create_app\n"
                           "client = TestClient(create_app(Matcher.load('run')).app)\n"
                           "r = client.get('/')\n"
                           "print(r.status_code, 'id=\"captions\"' in r.text)\n"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert page.stdout.split()[-2:] == ["200", "True"], page.stdout + page.stderr[-2000:]
