"""What a TVM exception's text becomes in our one-line error messages."""

from __future__ import annotations

from pytest_tvmdeploy.errors import brief


def test_brief_keeps_the_last_line_after_a_traceback() -> None:
    text = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n\n"
            "ValueError: Dynamic pads are not supported yet.")
    assert brief(Exception(text)) == "ValueError: Dynamic pads are not supported yet."


def test_brief_keeps_the_sentence_that_introduces_an_offending_call() -> None:
    text = ("Traceback:\n  frame\nInternalError: CodeGenVM cannot emit this Relax operator directly.\n"
            "Offending call:\nR.concat((alloc54, alloc55), axis=1)")
    assert brief(Exception(text)) == ("InternalError: CodeGenVM cannot emit this Relax operator directly. "
                                      "Offending call: R.concat((alloc54, alloc55), axis=1)")


def test_brief_of_an_empty_message_is_the_exception_type() -> None:
    assert brief(KeyError()) == "KeyError"
