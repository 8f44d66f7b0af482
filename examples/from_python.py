"""The leaderboard from Python: the shipped model, the shipped test split, two methods at
layer4, and its ranking drawn from the returned result (no file is read back)."""
import sys
from pathlib import Path

import matplotlib

REPO = Path(__file__).resolve().parent.parent  # the repository: its modules, model and data
sys.path.insert(0, str(REPO))  # installed (pip install): from camexplain.zoo import ... instead
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from leaderboard import leaderboard
from sources import dataset_split
from zoo import load_classifier

model = load_classifier(weights=REPO / "checkpoints" / "resnet18_fashion_mnist.pth")
split = dataset_split(model, REPO / "data")  # the test split of the dataset it was trained on

board = leaderboard(model.module, split, "cpu", methods=["gradcam", "layercam"],
                    layers=["layer4"], strategies=["zero"], steps=10, num_images=8)

order = board.ranked("zero")
for rank, result in enumerate(order, 1):
    d = result.difference
    print(f"{rank}. {result.label}: insertion - deletion {d.mean:.3f} {d.interval_text(3)}")

fig, ax = plt.subplots(figsize=(6, 2.5))
ax.barh([r.label for r in order][::-1], [r.difference.mean for r in order][::-1])
ax.set_xlabel("insertion AUC - deletion AUC (higher is better)")
fig.savefig("ranking.png", bbox_inches="tight")
