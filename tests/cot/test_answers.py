"""Answer extraction (numbers, choices, text), rationale/answer split and majority voting."""
import pytest

from livecast.services.llm.cot.answers import (answers_match, extract_answer, majority_vote, normalize_gold,
                                         split_rationale_answer, vote_counts)


@pytest.mark.parametrize("text, expected", [
    ("The answer is 1,234.", "1234"),
    ("So she pays $1,250.00 in total. The answer is $1,250.00.", "1250"),
    ("It costs $ 12 each.", "12"),
    ("The temperature is -7 degrees.", "-7"),
    ("It is −3 outside.", "-3"),
    ("Each donut costs 0.75 dollars.", "0.75"),
    ("Half is .5 of it.", "0.5"),
    ("3.50 + 1.50 = 5.00", "5"),
    ("12-4=8", "8"),
    ("We get 18.", "18"),
    ("Answer: 42", "42"),
    ("The answer is 42. Next we check 7 + 3 = 10.", "42"),  # after the marker, the first number wins
    ("there are 3, 4 and 5 cats", "5"),
    ("no digits here", None),
])
def test_number_extraction(text, expected):
    assert extract_answer(text, "number") == expected


def test_number_first_vs_last_without_marker():
    assert extract_answer(" 18. Then 20 more.", "number", "first") == "18"
    assert extract_answer(" 18. Then 20 more.", "number", "last") == "20"
    # a subtraction is not a negative number
    assert extract_answer("12 - 4 = 8", "number", "first") == "12"


@pytest.mark.parametrize("text, expected", [
    ("Therefore, among A through E, the answer is (C).", "C"),
    ("I think (b) is right", "B"),
    ("The answer is D", "D"),
    ("Between A and E I pick (E)", "E"),
    ("nothing useful", None),
])
def test_choice_extraction(text, expected):
    assert extract_answer(text, "choice") == expected


def test_text_extraction_normalises():
    assert extract_answer("Therefore, the answer is \"Paris\". It is the capital.", "text") == "paris"
    assert extract_answer("  Blue whale.\nMore text", "text") == "blue whale"
    assert extract_answer("   ", "text") is None


def test_split_rationale_answer():
    rationale, answer = split_rationale_answer("5 * 3 = 15 dollars. 23 - 15 = 8. The answer is 8.", "number")
    assert (rationale, answer) == ("5 * 3 = 15 dollars. 23 - 15 = 8.", "8")
    rationale, answer = split_rationale_answer("28 / 4 = 7 groups.\nA: The answer is 7.", "number")
    assert (rationale, answer) == ("28 / 4 = 7 groups.", "7")
    assert split_rationale_answer("just 3 + 4 = 7", "number") == ("just 3 + 4 = 7", "7")


def test_gold_and_matching():
    assert normalize_gold("1,000", "number") == "1000"
    assert normalize_gold(0.75, "number") == "0.75"
    assert normalize_gold("c", "choice") == "C"
    assert answers_match("7", "7.0", "number") and answers_match("-15", "-15", "number")
    assert not answers_match(None, "7", "number") and not answers_match("7", "8", "number")


def test_majority_vote_and_ties():
    assert majority_vote(["5", "7", "5", None, "7", "5"]) == ("5", 3)
    # tie between 7 and 5 (2 votes each): the answer seen first wins
    assert majority_vote([None, "7", "5", "5", "7"]) == ("7", 2)
    assert majority_vote(["5", "7", "7", "5"]) == ("5", 2)
    assert majority_vote([None, None]) == (None, 0)
    assert majority_vote([]) == (None, 0)
    assert vote_counts(["7", "5", "5", None, "9"]) == {"5": 2, "7": 1, "9": 1}
    assert list(vote_counts(["9", "7"])) == ["9", "7"]


def test_bad_format_names_the_field():
    with pytest.raises(ValueError, match="answer_format must be one of number, choice, text"):
        extract_answer("1", "numbers")
