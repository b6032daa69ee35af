"""Label selectors with Kubernetes matchLabels semantics, and heartbeat staleness. Pure."""

from __future__ import annotations

from typing import Literal

from harmony_core.labels import label_problems

__all__ = ["DeviceStatus", "device_status", "match_labels", "parse_selector"]

DeviceStatus = Literal["Ready", "Stale", "Offline", "Stopped", "Unknown"]


def parse_selector(text: str) -> dict[str, str]:
    """`key=value,key2=value2` -> dict; ValueError saying what is wrong."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip().removesuffix("=")
        value = value.strip().removeprefix("=")
        if not sep or not key:
            raise ValueError(f"{part!r}: a selector is key=value[,key=value...]")
        problems = label_problems(key, value, allow_reserved=True)
        if problems:
            raise ValueError(f"{part!r}: {problems[0]}")
        out[key] = value
    return out


def match_labels(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Every selector pair present with the same value (an empty selector matches all)."""
    return all(labels.get(k) == v for k, v in selector.items())


def device_status(age_s: float | None, interval_s: float | None, state: str | None) -> DeviceStatus:
    """Contract §3: Ready ≤ 4 x interval; Stale ≤ max(5 min, 20 x interval); Offline beyond;
    Stopped when the last heartbeat says `stopping`."""
    if age_s is None or interval_s is None:
        return "Unknown"
    if state == "stopping":
        return "Stopped"
    if age_s <= 4 * interval_s:
        return "Ready"
    if age_s <= max(300.0, 20 * interval_s):
        return "Stale"
    return "Offline"
