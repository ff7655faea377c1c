import json

import numpy as np
import pytest

from carparts.evaluate import evaluate
from carparts.tools.logit_adjust import class_bias, main


def test_tau_zero_is_the_evaluation_and_a_large_tau_paints_only_classes_the_training_masks_lack(
    tiny_model, tiny_coco, tmp_path, capsys
):
    out = tmp_path / "sweep.json"
    argv = ["--model", str(tiny_model), "--data", str(tiny_coco), "--train-data", str(tiny_coco), "--quiet"]
    assert main([*argv, "--taus", "0,100", "--out", str(out)]) == 0
    assert "part-mIoU" in capsys.readouterr().out
    record = json.loads(out.read_text())
    plain = evaluate(tiny_model, tiny_coco, progress=False)
    assert record["taus"]["0.0"]["confusion_matrix"] == plain["confusion_matrix"]
    assert record["taus"]["0.0"]["miou_parts"] == pytest.approx(plain["miou_parts"])
    # the bias is log(1 / pixel share): the rarest part (the light) and the classes missing from the masks (given
    # the largest weight) weigh most, so a huge tau predicts only them, never the door or the background
    bias = class_bias(tiny_coco).numpy()
    rarest = np.isclose(bias, bias.max())
    assert rarest.sum() == len(bias) - 2 and not rarest[0]
    matrix = np.asarray(record["taus"]["100.0"]["confusion_matrix"])
    assert matrix[:, ~rarest].sum() == 0 and matrix.sum() == np.asarray(plain["confusion_matrix"]).sum()
    assert main([*argv, "--taus", "0,x"]) == 2
    assert "--taus 0,x: not a comma-separated list of numbers" in capsys.readouterr().err
