"""Print the demo's comparison: pretrained vs energy fine-tuned, average over the OOD sets, per score."""

import csv
import sys


def averages(path):
    with open(path, newline="") as f:
        return {r["score"]: r for r in csv.DictReader(f) if r["ood"] == "average"}


before, after = averages(sys.argv[1]), averages(sys.argv[2])
print("\n== pretrained vs energy fine-tuned (mean over the OOD sets; percent)")
print(f"{'score':<10}{'model':<14}{'FPR95':>8}{'AUROC':>8}{'AUPR-In':>9}{'AUPR-Out':>10}{'ID acc':>8}")
for score in before:
    for name, rows in (("pretrained", before), ("fine-tuned", after)):
        r = rows[score]
        print(f"{score:<10}{name:<14}{float(r['fpr95']):>8.2f}{float(r['auroc']):>8.2f}{float(r['aupr_in']):>9.2f}"
              f"{float(r['aupr_out']):>10.2f}{float(r['id_acc']):>8.2f}")
e0, e1 = float(before["energy"]["fpr95"]), float(after["energy"]["fpr95"])
a0, a1 = float(before["energy"]["id_acc"]), float(after["energy"]["id_acc"])
print(f"\nenergy score, average FPR95: {e0:.2f} -> {e1:.2f} ({100 * (e0 - e1) / e0:.0f}% lower); "
      f"ID accuracy {a0:.2f} -> {a1:.2f} ({a1 - a0:+.2f} points)")
