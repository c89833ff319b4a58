"""`python -m pipeline doctor`: each check says what is wrong and what to do; a failing check fails the
command. (The cluster's shared-folder check runs against `ray start --head` in test_resume_cluster.py.)"""
import sys

import yaml

from pipeline import doctor
from pipeline.config import PROFILES_DIR


def test_checks_report_missing_models_low_disk_and_missing_binaries(tmp_path, monkeypatch):
    raw = yaml.safe_load((PROFILES_DIR / "pretrain.yaml").read_text())
    raw["lm_filter"]["model"] = str(tmp_path / "no-such-model")
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(raw))
    checks = doctor.profile_checks(["pretrain", str(broken)])
    assert [c.status for c in checks] == [doctor.OK, doctor.FAIL]
    assert "lm_filter" in checks[1].detail and "no-such-model" in checks[1].detail

    assert doctor.disk_check(str(tmp_path / "not" / "yet")).status == doctor.OK   # the nearest existing folder
    monkeypatch.setattr(doctor, "MIN_FREE_GB", 1e9)
    low = doctor.disk_check(str(tmp_path))
    assert low.status == doctor.WARN and "GB free" in low.detail

    assert doctor.binary("ffmpeg").status == doctor.OK
    missing = doctor.binary("no-such-ffmpeg")
    assert missing.status == doctor.FAIL and "not on PATH" in missing.detail
    js = {c.name: c for c in doctor.ytdlp_checks()}["js runtime"]
    assert js.status == doctor.OK and "deno" in js.detail and sys.prefix in js.detail   # the venv's deno
