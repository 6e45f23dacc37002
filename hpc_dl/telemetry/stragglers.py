"""Which rank slows the job down, and on which node.

In synchronous training every rank's step takes as long as the slowest one's, so a step's wall time
names nobody. What differs is the time a rank spends on its own work: the step minus the time it
waited for the others in the gradient all-reduce (``comm_s``, timed by DDP's comm hook; the fast
ranks wait, the slow one does not). Every log window each rank's step time, data wait, all-reduce
wait and own time are gathered; a rank whose own time exceeds the other ranks' median by ``margin``
(a fraction) for ``WINDOWS`` windows in a row is named with its host. Strategies without a comm hook (FSDP,
DeepSpeed) report the per-rank times, but their own time includes the wait, so nobody stands out.
"""

import statistics

WINDOWS = 3  # windows in a row before a rank is named: one slow window is noise


class Stragglers:
    def __init__(self, margin: float):
        self.margin = margin
        self.streak: dict[int, int] = {}
        self.named: dict[int, dict] = {}  # rank -> what the summary says about it
        self.nodes: dict[str, dict] = {}  # host -> sums over windows

    def update(self, ranks: list[dict]) -> list[dict]:
        """``ranks``: one dict per rank with rank, host, step_s, data_s, own_s. Returns the ranks that
        are stragglers in this window (those slow for WINDOWS windows in a row), each once per window."""
        timed = [r for r in ranks if r.get("own_s") is not None]
        for r in timed:
            node = self.nodes.setdefault(r["host"], {"ranks": set(), "windows": 0, "step_s": 0.0, "data_s": 0.0,
                                                     "own_s": 0.0, "straggler_windows": 0})  # fmt: skip
            node["ranks"].add(r["rank"])
            node["windows"] += 1
            for key in ("step_s", "data_s", "own_s"):
                node[key] += r.get(key) or 0.0
        if len(timed) < 2 or not self.margin:
            return []
        slow = []
        for r in timed:  # against the others' median: with two ranks, the median of all would halve the gap
            median = statistics.median(o["own_s"] for o in timed if o is not r)
            if r["own_s"] > median * (1 + self.margin):
                self.streak[r["rank"]] = self.streak.get(r["rank"], 0) + 1
            else:
                self.streak[r["rank"]] = 0
            if self.streak[r["rank"]] >= WINDOWS:
                entry = {"rank": r["rank"], "host": r["host"], "own_s": r["own_s"], "median_own_s": median,
                         "windows": self.streak[r["rank"]]}  # fmt: skip
                slow.append(entry)
                named = self.named.setdefault(r["rank"], {"rank": r["rank"], "host": r["host"], "windows": 0})
                named["windows"] += 1
                named["worst_ratio"] = max(named.get("worst_ratio", 0.0), r["own_s"] / median if median else 0.0)
                self.nodes[r["host"]]["straggler_windows"] += 1
        return slow

    @staticmethod
    def line(entry: dict) -> str:
        return (
            f"straggler: rank {entry['rank']} ({entry['host']}) spends {entry['own_s'] * 1e3:.1f} ms per step on its "
            f"own work against a median of {entry['median_own_s'] * 1e3:.1f} ms, {entry['windows']} log windows in "
            f"a row; if it stays slow, exclude the node next time: sbatch --exclude={entry['host']}"
        )

    def summary(self) -> dict:
        """The stragglers named during the run and a per-node table (means per step over windows)."""
        nodes = []
        for host, n in sorted(self.nodes.items()):
            w = max(n["windows"], 1)
            nodes.append({"host": host, "ranks": sorted(n["ranks"]), "step_s": n["step_s"] / w,
                          "data_s": n["data_s"] / w, "own_s": n["own_s"] / w,
                          "straggler_windows": n["straggler_windows"]})  # fmt: skip
        return {"stragglers": sorted(self.named.values(), key=lambda s: s["rank"]), "nodes": nodes}
