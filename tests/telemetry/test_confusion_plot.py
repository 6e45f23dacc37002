"""confusion.png: the test split's confusion matrix beside each class's accuracy, read from the figure."""

import pytest

from hpc_dl.telemetry.plots import confusion_figure, plot_confusion, plt


def test_the_matrix_is_labelled_with_class_names_counts_and_per_class_accuracy():
    confusion = [[8, 2, 0], [1, 9, 0], [0, 3, 7]]  # rows: true class; columns: predicted
    fig = confusion_figure(confusion, ["cat", "dog", "bird"], "pets-cnn-20261202", 24 / 30)
    matrix, bars = fig.axes[0], fig.axes[1]
    assert fig.get_suptitle() == "pets-cnn-20261202: confusion matrix on the test split (test accuracy 0.8)"
    assert matrix.get_xlabel() == "predicted class" and matrix.get_ylabel() == "true class"
    assert [t.get_text() for t in matrix.get_xticklabels()] == ["cat", "dog", "bird"]
    assert [t.get_text() for t in matrix.get_yticklabels()] == ["cat", "dog", "bird"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in matrix.texts}
    assert cells == {(i, j): str(n) for i, row in enumerate(confusion) for j, n in enumerate(row)}
    assert bars.get_xlabel() == "per-class accuracy" and bars.get_xlim() == (0, 1)
    assert [p.get_width() for p in bars.patches] == pytest.approx([0.8, 0.9, 0.7])
    assert [t.get_text() for t in bars.texts] == ["80%", "90%", "70%"]
    assert bars.get_ylim() == matrix.get_ylim()  # each bar level with its row
    plt.close(fig)


def test_many_classes_drop_the_counts_then_the_names_and_absent_classes_show_a_dash():
    names = [f"c{i}" for i in range(25)]
    confusion = [[5 if i == j else 0 for j in range(25)] for i in range(25)]
    confusion[3] = [0] * 25  # class c3 is not in the test split
    fig = confusion_figure(confusion, names, "run", None)
    assert not fig.axes[0].texts and [t.get_text() for t in fig.axes[0].get_xticklabels()] == names
    assert fig.get_suptitle() == "run: confusion matrix on the test split"
    plt.close(fig)
    fig = confusion_figure([row[:3] for row in confusion[:3]], [], "run", 1.0)  # no names: 0, 1, 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "2"]
    plt.close(fig)
    fig = confusion_figure([[1, 0, 0], [0, 0, 0], [0, 0, 1]], ["a", "b", "c"], "run", 1.0)
    assert [t.get_text() for t in fig.axes[1].texts] == ["100%", "-", "100%"]
    plt.close(fig)
    big = [[1] * 40 for _ in range(40)]
    fig = confusion_figure(big, [str(i) for i in range(40)], "run", 0.025)
    assert "39" not in [t.get_text() for t in fig.axes[0].get_xticklabels()]  # 40 names would overlap
    plt.close(fig)


def test_plot_confusion_writes_a_png_only_for_a_classification_result(tmp_path):
    test = {"accuracy": 0.75, "confusion": [[2, 1], [0, 1]], "per_class_accuracy": {"no": 2 / 3, "yes": 1.0}}
    path = plot_confusion(test, tmp_path)
    assert path == tmp_path / "confusion.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_confusion({"rmse": 1.0, "r2": 0.9}, tmp_path / "other") is None
