"""A worker's /metrics, parsed (prometheus_client's own parser). Imports prometheus-client."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# sample name -> {labels (sorted items) -> value}
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape_text(port: int) -> str:
    """The exposition text the worker on ``port`` serves now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())



def scrape(port: int) -> Samples:
    """Every sample the worker on ``port`` serves now."""
    out: Samples = {}
    for family in text_string_to_metric_families(scrape_text(port)):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for key, v in samples.get(name, {}).items()
               if all((k, val) in key for k, val in labels.items()))
