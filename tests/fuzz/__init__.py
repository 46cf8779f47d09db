"""Coverage-guided fuzzing (atheris) and request-cost property tests (hypothesis): issue 20."""


class FuzzFinding(AssertionError):
    """An input that breaks a harness's property: the message says which and how."""
