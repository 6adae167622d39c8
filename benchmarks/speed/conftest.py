"""The speed suite keeps each finished benchmark and resumes after an interruption (`resume`)."""
from __future__ import annotations

import pytest

from benchmarks.speed.resume import Resume


def pytest_configure(config):
    config._speed_resume = Resume(config)
    config._speed_resume.install()


@pytest.hookimpl(trylast=True)  # after `-k`/`-m` deselected what was not asked for
def pytest_collection_modifyitems(config, items):
    config._speed_resume.skip_finished(items)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    config._speed_resume.add_finished(output_json)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # around pytest-benchmark's own, which writes the JSON first
def pytest_sessionfinish(session, exitstatus):
    session.config._speed_resume.drop_unmeasured()
    yield
    session.config._speed_resume.finish(session)


def pytest_unconfigure(config):
    resume = getattr(config, "_speed_resume", None)
    if resume is not None:
        resume.uninstall()
        resume.report()
