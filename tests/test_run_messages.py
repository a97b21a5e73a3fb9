"""What a training run says about where its values came from (issue 36): the seed and the data folder of a
``--config`` re-run, why --precision auto chose what it chose, and the sample predictions' rounding."""
import re

from conftest import TINY_IMAGE, itm_cli


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def test_a_config_rerun_says_its_seed_and_data_came_from_the_config(tiny_data, tmp_path):
    first = itm_cli("train", "--data-dir", tiny_data, "--epochs", 1, "--batch-size", 8, "--seed", 4,
                    "--image-size", TINY_IMAGE, "--precision", "auto", "--output-dir", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    assert f"Data: {tiny_data} (from --data-dir)" in first.stdout
    flags = _cpu_flags()
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        assert "Seed: 4 (from --seed); precision: float32 (auto: no GPU, and the CPU has no AVX512-BF16" in first.stdout
    else:
        assert "Seed: 4 (from --seed); precision: mixed_bfloat16 (auto: the CPU has" in first.stdout
    samples = [line for line in first.stdout.splitlines() if line.startswith("ITM=")]
    assert samples and all(re.search(r" match=[01]\.\d{4}, no-match=[01]\.\d{4} \t", line) for line in samples), samples

    config = tmp_path / "a" / "config.json"
    again = itm_cli("train", "--config", config, "--output-dir", tmp_path / "b")
    assert again.returncode == 0, again.stderr
    assert f"(from --config {config})" in again.stdout and f"Seed: 4 (from --config {config})" in again.stdout
    assert "from --seed" not in again.stdout and "from --data-dir" not in again.stdout
    # an option given on the command line is still the command line's
    third = itm_cli("train", "--config", config, "--seed", 5, "--output-dir", tmp_path / "c")
    assert third.returncode == 0 and "Seed: 5 (from --seed)" in third.stdout
