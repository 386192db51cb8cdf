"""The figures the results pages and README quote, rendered from results.json alone.

Each quoted passage sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` in its markdown file;
``paper_table.py --task hidden:structure --table-only --docs`` rewrites every such block from the stored results, so
no figure on those pages is typed by hand and a test can check that they match the data byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from sgpo.evaluation.statistics import equivalence, holm

from experiments import follower_table, render, versus
from experiments.rows import SWEEP_ROW, variants
from experiments.store import Results

DOCS = ("README.md", "docs/results-hidden.md", "docs/follower.md")
SEEDS = [1, 2, 3, 4, 5]
# the rows of the results table, and the follower settings tested against epsilon 0 (one family for Holm)
TABLE_ROWS = [1, 2, 3, 4, 5, 6, 7, 11]
FOLLOWER = ["ssapo_prob", "ssapo_margin", "ssapo_paper"]
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(.*?)(<!-- end: (?P=name) -->)", re.DOTALL)


class Quoted:
    """The blocks of the hidden track's pages, from ``results`` (the table's) and ``flips`` (row 9's)."""

    def __init__(self, results: Results, flips: Results, judge: str = "structure") -> None:
        self.results, self.flips, self.judge = results, flips, judge
        self.catalogue = variants(judge)

    def rows(self, numbers: list[int]) -> list:
        return [v for v in self.catalogue if v.row in numbers]

    def gap(self, name: str, reference: str, results: Results | None = None) -> str:
        """``name - reference``: the seed x prompt interval with its p-value and equivalence verdict."""
        r = versus.seed_interval(results or self.results, name, reference, SEEDS)
        if r is None:
            return "pending (fewer than 2 seeds)"
        verdict = equivalence(r, versus.EQUIVALENCE_MARGIN)
        return f"{versus.interval_text(r)}, p = {r.p_value:.2g}, TOST ±{versus.EQUIVALENCE_MARGIN}: {verdict}"

    def family(self) -> dict[str, tuple]:
        """Every follower setting against epsilon 0 (rows 5, 6 and 12): its interval and Holm-adjusted p-value."""
        names = FOLLOWER + [v.name for v in self.rows([SWEEP_ROW])]
        found = {n: r for n in names if (r := versus.seed_interval(self.results, n, "iter_dpo", SEEDS)) is not None}
        adjusted = holm([r.p_value for r in found.values()])
        return {n: (r, p) for (n, r), p in zip(found.items(), adjusted, strict=True)}

    def blocks(self) -> dict[str, Callable[[], str]]:
        return {
            "results-table": lambda: render.hidden_table(
                self.results, self.rows(TABLE_ROWS), TABLE_ROWS, SEEDS, self.judge
            ),
            "results-figures": self.results_figures,
            "follower-table": lambda: follower_table.follower_sweep_table(self.results, self.rows([SWEEP_ROW]), SEEDS),
            "follower-figures": self.follower_figures,
            "soft-trim-kept": self.soft_trim_kept,
            "flips-table": lambda: render.hidden_table(self.flips, self.rows([9]), [1, 9], SEEDS, self.judge),
            "epsilon-table": lambda: render.hidden_table(
                self.results, self.rows([2, 4, 8, 10]), [2, 4, 8, 10], [1], self.judge
            ),
            "claims": self.claims,
        }

    def results_figures(self) -> str:
        lines = [
            f"- Full gold - DPO on the seed: {self.gap('dpo_gold', 'dpo_seed')}",
            f"- Iterative DPO (eps = 0) - DPO on the seed: {self.gap('iter_dpo', 'dpo_seed')}",
            f"- Full gold - iterative DPO: {self.gap('dpo_gold', 'iter_dpo')}",
            f"- SSAPO, probability space - full gold: {self.gap('ssapo_prob', 'dpo_gold')}",
            f"- SSAPO, probability space - iterative DPO: {self.gap('ssapo_prob', 'iter_dpo')}",
            f"- SSAPO, margin space - iterative DPO: {self.gap('ssapo_margin', 'iter_dpo')}",
            f"- SSAPO, the paper's follower - iterative DPO: {self.gap('ssapo_paper', 'iter_dpo')}",
            f"- SPPO, self-annotator - DPO on the seed: {self.gap('sppo_self', 'dpo_seed')}",
            f"- SPPO, self-annotator - iterative DPO: {self.gap('sppo_self', 'iter_dpo')}",
            f"- Gated - ungated iterative DPO: {self.gap('iter_dpo_gate', 'iter_dpo')}",
            f"- Gated - ungated SSAPO: {self.gap('ssapo_prob_gate', 'ssapo_prob')}",
        ]
        return "\n".join([*lines, *render.fitness(self.results, SEEDS)[1:]])

    def follower_figures(self) -> str:
        family = self.family()
        lines = [f"Against epsilon = 0, Holm over the {len(family)} follower settings of rows 5, 6 and 12:"]
        for name, (r, p) in family.items():
            verdict = equivalence(r, versus.EQUIVALENCE_MARGIN)
            lines.append(f"- {name}: {versus.interval_text(r)}, Holm p = {p:.2g}, {verdict}")
        drop = [v.name for v in self.rows([SWEEP_ROW]) if v.name.startswith("margin_drop")]
        for name in drop:
            if name not in family:
                lines.append(f"- {name}: pending (fewer than 2 seeds finished)")
        lines.append("")
        lines.append("The uncapped follower as a detector (gold reverses the self-label: attacked / all %, exact p):")
        for name in ("uncapped_probability_0.05", "uncapped_probability_0.1", "uncapped_margin_0.1", *drop):
            rounds = follower_table.attack_rounds(self.results, name, SEEDS)
            if not rounds:
                lines.append(f"- {name}: pending")
                continue
            cells = [
                f"all rounds {follower_table.detector(rounds)}",
                *(
                    f"round {t} {follower_table.detector(follower_table.attack_rounds(self.results, name, SEEDS, t))}"
                    for t in (1, 2)
                ),
                f"attacked = the k lowest margins in {follower_table.lowest_margins(rounds)} rounds",
            ]
            lines.append(f"- {name}: " + "; ".join(cells))
        for name in drop:
            lines.append(f"- {name} - trim_uncapped_0.1: {self.gap(name, 'trim_uncapped_0.1')}")
        return "\n".join(lines)

    def soft_trim_kept(self) -> str:
        rounds = follower_table.attack_rounds(self.results, "soft_trim_0.1", SEEDS)
        kept = [1 - x for r in rounds for x in (r["moved_per_pair"][0], r["moved_per_pair"][2])]
        if not kept:
            return "pending"
        return f"The capped worst case at epsilon 0.1 leaves each pair {min(kept):.3f} to {max(kept):.3f} of its mass."

    def detector_claim(self, link: str) -> tuple[str, str, str, str]:
        """The uncapped worst case (probability space, eps 0.1) as a detector of wrong self-labels."""
        name = "uncapped_probability_0.1"
        rounds = follower_table.attack_rounds(self.results, name, SEEDS)
        test = follower_table.detector_test(rounds)
        claim = "The uncapped worst case finds wrongly self-labelled pairs"
        if test is None:
            return claim, "inconclusive", "pending", f"[row 12]({link})"
        first = follower_table.detector(follower_table.attack_rounds(self.results, name, SEEDS, 1))
        evidence = (
            f"probability space, eps 0.1: gold reverses attacked / all %: {follower_table.detector(rounds)} (exact, "
            f"within seed x round); round 1 alone {first}; no more than the margin rank finds: the attacked pairs are "
            f"the k lowest margins in {follower_table.lowest_margins(rounds)} rounds, and dropping those pairs by rank "
            f"(no program) - the follower's trim: {self.gap('margin_drop_0.1', 'trim_uncapped_0.1')}"
        )
        verdict = "holds" if test[4] < versus.SIGNIFICANCE else "inconclusive"
        rank = versus.seed_interval(self.results, "margin_drop_0.1", "trim_uncapped_0.1", SEEDS)
        if verdict == "holds" and rank is not None and equivalence(rank, versus.EQUIVALENCE_MARGIN) == "equivalent":
            verdict = "holds, no better than the margin rank"
        return claim, verdict, evidence, f"[row 12]({link})"

    def claims(self) -> str:
        """README's claims table: each claim's verdict by the rules of :func:`versus.verdict`, with its evidence."""
        hidden = "docs/results-hidden.md"
        table = f"{hidden}#the-results-table-three-to-five-seeds"
        sweep = f"{hidden}#the-follower-without-its-cap-and-its-trims-row-12-three-to-five-seeds"
        tests = self.family()
        # the follower's own settings; the margin drop (no program) is its baseline, adjusted with them by Holm
        family = {n: v for n, v in tests.items() if not n.startswith("margin_drop")}
        best = max(family.items(), key=lambda kv: kv[1][0].mean) if family else None
        if best is None:
            follower = "inconclusive"
        elif any(r.mean > 0 and p < versus.SIGNIFICANCE for r, p in family.values()):
            follower = "holds"
        elif all(
            equivalence(r, versus.EQUIVALENCE_MARGIN) == "equivalent" or (p < versus.SIGNIFICANCE and r.mean < 0)
            for r, p in family.values()
        ):
            follower = "does not hold"
        else:
            follower = "inconclusive"
        equivalent = sum(equivalence(r, versus.EQUIVALENCE_MARGIN) == "equivalent" for r, _ in family.values())
        smallest = min((p for _, p in family.values()), default=float("nan"))
        near = versus.seed_interval(self.results, "ssapo_prob", "dpo_gold", SEEDS)
        near_verdict = "inconclusive" if near is None else {
            "equivalent": "holds", "not equivalent": "does not hold"}.get(
            equivalence(near, versus.EQUIVALENCE_MARGIN), "inconclusive")  # fmt: skip
        eps = {e: versus.cell(self.results, f"eps_{e}", "eps_0", [1], per_seed=False) for e in ("0.01", "0.1")}
        rows = [
            (
                "Self-annotation beats DPO on the seed alone (SPA, SSAPO)",
                versus.verdict(versus.seed_interval(self.results, "iter_dpo", "dpo_seed", SEEDS)),
                f"iterative DPO - DPO on the seed {self.gap('iter_dpo', 'dpo_seed')}",
                f"[rows 2, 4]({table})",
            ),
            (
                "SSAPO with ~3% gold labels approaches DPO on all gold labels",
                near_verdict,
                f"SSAPO - full gold {self.gap('ssapo_prob', 'dpo_gold')}",
                f"[rows 3, 5]({table})",
            ),
            (
                "The Wasserstein follower improves on epsilon = 0",
                follower,
                f"{len(family)} follower settings (rows 5, 6, 12), Holm over the {len(tests)} tests of rows 5, 6 and "
                f"12: smallest adjusted p = {smallest:.2g}; "
                f"{equivalent} of {len(family)} equivalent to epsilon 0 within ±{versus.EQUIVALENCE_MARGIN}"
                + (f"; best {best[0]} {versus.interval_text(best[1][0])}" if best else ""),
                f"[rows 4-6]({table}), [row 12]({sweep}), [the follower](docs/follower.md)",
            ),
            self.detector_claim(sweep),
            (
                "Epsilon peaks at 0.01",
                "inconclusive",
                f"one seed only: eps 0.01 - eps 0 {eps['0.01']}, eps 0.1 - eps 0 {eps['0.1']}",
                f"[row 8]({hidden}#epsilon-and-the-seed-size-rows-8-and-10-seed-1)",
            ),
            (
                "SPPO with self-annotated win probabilities is label-efficient",
                versus.verdict(versus.seed_interval(self.results, "sppo_self", "dpo_seed", SEEDS)),
                f"SPPO - DPO on the seed {self.gap('sppo_self', 'dpo_seed')}",
                f"[row 7]({table})",
            ),
            (
                "The follower protects against noisy seed labels",
                versus.verdict(versus.seed_interval(self.flips, "flip_ssapo", "flip_dpo", SEEDS)),
                f"SSAPO - DPO on the same flipped seed {self.gap('flip_ssapo', 'flip_dpo', self.flips)}",
                f"[row 9]({hidden}#label-noise-row-9-three-seeds)",
            ),
        ]
        lines = ["| claim | here | evidence (95% CI over seeds and prompts) | details |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in rows]
        return "\n".join(lines)


def rewrite(text: str, blocks: dict[str, Callable[[], str]], source: str = "text") -> str:
    """``text`` with every generated block's body replaced by its renderer's output."""

    def body(match: re.Match) -> str:
        name = match["name"]
        if name not in blocks:
            raise KeyError(f"{source}: generated block {name!r} has no renderer; expected one of {sorted(blocks)}")
        return match[1] + blocks[name]() + "\n" + match[4]

    return BLOCK.sub(body, text)


def rewrite_docs(root: Path, results: Results, flips: Results) -> None:
    """Rewrite the generated blocks of :data:`DOCS` under ``root``."""
    blocks = Quoted(results, flips).blocks()
    for name in DOCS:
        path = root / name
        text = path.read_text()
        new = rewrite(text, blocks, name)
        if new != text:
            path.write_text(new)
