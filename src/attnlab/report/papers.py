"""The papers the report reproduces, and where in them each claim comes from.

Bibliographic facts are from ../shared/reference/ (arXiv listings and PMLR metadata). Where the
sources did not give a theorem number, the entry says so instead of guessing one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    key: str
    authors: str
    year: int
    title: str
    venue: str
    url: str
    note: str = ""

    @property
    def short(self) -> str:
        first = self.authors.split(",")[0].split(" and ")[0].strip().split()[-1]
        return f"{first} et al. {self.year}"


PAPERS = {
    "A": Paper(
        "A",
        "Kulin Shah, Michael Hahn, Satwik Bhattamishra, Varun Kanade",
        2026,
        "Provably Learning Attention with Queries",
        "arXiv:2601.16873; ICML 2026, PMLR 306:7980-7998",
        "https://arxiv.org/abs/2601.16873",
        "Author order of arXiv v1; v2 and the PMLR proceedings list Bhattamishra first "
        "(https://proceedings.mlr.press/v306/bhattamishra26a.html).",
    ),
    "B": Paper(
        "B",
        "Clayton Sanford, Daniel Hsu, Matus Telgarsky",
        2023,
        "Representational Strengths and Limitations of Transformers",
        "arXiv:2306.02896; NeurIPS 2023",
        "https://arxiv.org/abs/2306.02896",
    ),
    "MH": Paper(
        "MH",
        "Kim, Kim and Guo",
        2026,
        "Provably Learning Multi-Head Attention with Queries",
        "arXiv:2608.03294 (follow-up to Part A's paper)",
        "https://arxiv.org/abs/2608.03294",
    ),
}

PART_NAMES = {
    "A": "Part A: learning attention from queries",
    "B": "Part B: what one attention layer can represent",
}

# claim -> (paper, where in it). "number not confirmed" marks results whose number our sources
# do not give.
SOURCES: dict[str, tuple[str, str]] = {
    "exact-single-head": ("A", "Theorem 4.1"),
    "low-rank-single-head": ("A", "Theorem 5.1"),
    "affine-pytorch-mha": ("A", "Theorem 4.1, extended by attnlab to heads with biases"),
    "noisy-single-head": ("A", "Theorem 6.1"),
    "relu-ffn": ("A", "the FFN learner the one-layer Transformer result assumes"),
    "one-layer-transformer": ("A", "the one-layer Transformer result (number not confirmed)"),
    "multihead-nonidentifiable": ("A", "Proposition 7.1"),
    "multihead-canonical": ("MH", "the canonical multi-head learner"),
    "qsa-width-q-log-n": ("B", "Theorem 2"),
    "qsa-moment-curve": ("B", "Theorem 3"),
    "qsa-lower-bound": ("B", "Theorem 4"),
    "match2-one-unit": ("B", "the Match2 construction (number not confirmed)"),
    "match3-third-order": ("B", "Theorem 7 (Match3 lower bound) and the third-order construction"),
    "qsa-training-samples": ("B", "Appendix D (training experiments)"),
}


def source_of(key: str, part: str) -> tuple[Paper, str]:
    """The paper a claim comes from and where in it; unknown claims get their part's paper."""
    paper_key, where = SOURCES.get(key, (part, ""))
    return PAPERS.get(paper_key, PAPERS["A"]), where
