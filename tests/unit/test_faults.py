"""The test-only fault rules: parsed once by the runner entry, strict about what they name."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers import callbacks, faults


def test_rules_apply_to_every_job_or_the_named_one() -> None:
    rules = faults.parse("slow@0:0.2, segfault@2/crashme,onnx_fail@0/other", "crashme")
    assert rules == [faults.Rule("slow", 0, 0.2, ""), faults.Rule("segfault", 2, 0.0, "crashme")]
    assert faults.parse("", "any") == []


@pytest.mark.parametrize("text", ["segfalt@2", "slow@0:0.1,explode@1/other", "raise@one",
                                  "slow@0:fast"])
def test_an_unknown_or_malformed_rule_is_an_error(text: str) -> None:
    # A typo fails loudly, even in a rule for another job, instead of a chaos test
    # passing without its fault.
    with pytest.raises(ValueError, match="fault rule"):
        faults.parse(text, "job")


def test_onnx_fail_is_a_flag_not_a_training_fault() -> None:
    injection = faults.FaultInjection(faults.parse("onnx_fail@0", "job"))
    assert injection.onnx_fails and injection.rules == []


def test_production_callbacks_know_nothing_of_faults() -> None:
    # The fault module depends on the callbacks, never the other way round.
    source = Path(callbacks.__file__).read_text()
    assert "fault" not in source.lower() and "get_settings" not in source
