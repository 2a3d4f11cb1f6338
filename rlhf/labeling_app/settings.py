"""Settings of the labeling app (typed, one docstring per field, like rlhf/config.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LabelSettings:
    database_url: str = ""
    """SQLAlchemy URL: empty = SQLite file $RLHF_LABEL_DATA/label.db (WAL mode); or postgresql://user@host:port/db."""
    secret_key: str = ""
    """Key signing the session cookie; empty = $RLHF_LABEL_SECRET, else a random key kept in the data directory."""
    gold_rate: float = 0.1
    """Probability that a labeler's next query is a gold query they have not answered yet (when one is left)."""
    gold_threshold: float = 0.7
    """A labeler whose accuracy on gold queries falls below this is paused from new work."""
    gold_min_answers: int = 5
    """Gold answers needed before the accuracy threshold applies."""
    qualification_threshold: float = 0.8
    """Accuracy on the qualification batch needed before a labeler gets regular work."""
    assignment_timeout_minutes: float = 120.0
    """An unanswered overlap slot taken longer ago than this is given to someone else when work runs out."""
    login_max_failures_per_user: int = 5
    """Login attempts (not counting successful ones) on one account within the window after which its logins get
    HTTP 429 until they age out or `rlhf label unlock NAME` clears them; kept in the database for all processes."""
    login_max_failures_per_address: int = 30
    """Login attempts (not counting successful ones) from one client address within the window after which that
    address gets HTTP 429."""
    login_window_seconds: float = 900.0
    """The sliding window of the two login limits."""
    cookie_https_only: bool = False
    """Send the session cookie only over HTTPS, and HSTS on every response (`rlhf label serve --cookie-secure`;
    set it when serving behind TLS)."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted, in bytes; a larger one gets HTTP 413 before any of it is parsed."""

    def __post_init__(self) -> None:
        for name in ("gold_rate", "gold_threshold", "qualification_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"LabelSettings.{name}: expected a number in 0..1, got {value}")
        if self.gold_min_answers < 1:
            raise ValueError("LabelSettings: gold_min_answers must be at least 1")
        if (
            self.login_max_failures_per_user < 1
            or self.login_max_failures_per_address < 1
            or self.login_window_seconds <= 0
        ):
            raise ValueError("LabelSettings: the login limits must be at least 1 and login_window_seconds positive")
        if self.max_body_bytes < 1:
            raise ValueError(f"LabelSettings.max_body_bytes: expected at least 1, got {self.max_body_bytes}")
