"""The right-sized model for a device: candidates measured on the target, trained by successive halving."""

from mobilenets.search.candidates import Budget, Candidate, RunRecord, pareto_front, recommend
from mobilenets.search.runner import Search, SearchResult, SearchSettings, run_search

__all__ = [
    "Budget",
    "Candidate",
    "RunRecord",
    "Search",
    "SearchResult",
    "SearchSettings",
    "pareto_front",
    "recommend",
    "run_search",
]
