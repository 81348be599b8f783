"""Print how well a scan separated sample_data/incoming (AUC from labels.csv), after `make demo`."""
import csv
import sys
from pathlib import Path

from sklearn.metrics import roc_auc_score

scores_csv, labels_csv = sys.argv[1], sys.argv[2]
labels = {Path(r["path"]).name: int(r["label"]) for r in csv.DictReader(open(labels_csv, encoding="utf-8"))}
rows = [r for r in csv.DictReader(open(scores_csv, encoding="utf-8")) if r["score"]]
y = [labels[Path(r["path"]).name] for r in rows]
s = [float(r["score"]) for r in rows]
flagged = [r for r in rows if r["is_anomaly"] == "true"]
hits = sum(labels[Path(r["path"]).name] for r in flagged)
print(f"demo: AUC {roc_auc_score(y, s):.3f} on {len(rows)} incoming images; flagged {len(flagged)} "
      f"({hits} truly anomalous, {len(flagged) - hits} normal). Report: {Path(scores_csv).parent}/report.html")
