import argparse

import pytest

from orderopt.errors import OneLineErrorParser, UserError, number, run_cli


def test_number_accepts_values_in_range():
    assert number(at_least=1)("3") == 3
    assert number(at_least=64, multiple_of=64)("128") == 128
    assert number(float, above=0)("1e-4") == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (number(at_least=1), "0", "must be at least 1, got 0"),
        (number(at_least=64, multiple_of=64), "100", "must be a multiple of 64, got 100"),
        (number(float, above=0), "0", "must be more than 0, got 0"),
        (number(), "2.5", "invalid int value: '2.5'"),
        (number(float, above=0), "inf", "must be a finite number, got inf"),  # trained to inf weights
        (number(float, above=0), "nan", "must be a finite number, got nan"),
        (number(float, at_least=0, at_most=1), "1.5", "must be at most 1, got 1.5"),
        (number(float, at_least=0, below=1), "1", "must be less than 1, got 1"),  # --min-delta
    ],
)
def test_number_rejects_with_the_reason(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        kind(text)


def test_bad_option_value_is_one_line_and_exit_2(capsys):
    p = OneLineErrorParser(prog="tool")
    p.add_argument("--steps", type=number(at_least=1), default=5)
    assert p.parse_args([]).steps == 5
    with pytest.raises(SystemExit) as exit_:
        p.parse_args(["--steps", "-2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: argument --steps: must be at least 1, got -2")


def test_run_cli_turns_user_errors_into_exit_2(capsys):
    def main(argv):
        raise UserError("the order is invalid; fix it")

    assert run_cli(main, []) == 2
    assert capsys.readouterr().err == "error: the order is invalid; fix it\n"
