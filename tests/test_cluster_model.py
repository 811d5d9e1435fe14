"""The cluster model's wiring: grouping renders, render directories, every render and `trnctl validate`."""
from __future__ import annotations

import yaml

from tests.platform_helpers import rendered_workload
from trnctl import exitcodes
from trnctl.cluster import findings_for_result, models_for, render_from_dir
from trnctl.render import write_outputs


def test_a_workload_render_brings_its_platform_and_llm_serve_finds_it_through_lora():
    result = rendered_workload("llm-serve-usw2")
    stacks = {r.stack for r in [result, *result.referenced, *result.referenced[0].referenced]}
    assert {"llm-serve-usw2", "lora-finetune-usw2", "dev-usw2"} <= stacks
    assert all(f.severity == "advisory" for f in findings_for_result(result))


def _write(tmp_path, *stacks):
    result = rendered_workload(stacks[0])
    write_outputs(result, tmp_path / result.stack)
    for ref in result.referenced:
        write_outputs(ref, tmp_path / ref.stack)
    return result


def test_validate_runs_the_cluster_model_over_render_directories(tmp_path, capsys):
    from trnctl.validation import main
    _write(tmp_path, "ray-pretrain-usw2")
    renders = [render_from_dir(d) for d in sorted(tmp_path.iterdir())]
    (model,) = models_for(renders)
    assert model.platform.stack == "dev-usw2" and [w.stack for w in model.workloads] == ["ray-pretrain-usw2"]
    assert main([str(tmp_path)]) == exitcodes.OK
    assert "cluster model over dev-usw2, ray-pretrain-usw2" in capsys.readouterr().out

    # the ml-shared policy as it was (same namespace only): Prometheus and the KubeRay operator blocked
    policy = next((tmp_path / "dev-usw2" / "manifests").glob("ml-shared-networkpolicy-*.yaml"))
    doc = yaml.safe_load(policy.read_text())
    doc["spec"]["ingress"] = [{"from": [{"podSelector": {}}]}]
    policy.write_text(yaml.safe_dump(doc))
    assert main([str(tmp_path)]) == exitcodes.FINDINGS
    assert "reachability/blocked (mandatory)" in capsys.readouterr().out
