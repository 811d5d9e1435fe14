"""Messages a newcomer gets for the common mistakes (issue 23 item 5): one message per
mistake, with the fix (did you mean, remove the quotes, quote it as written), every workload
problem in one run, and the stack and its file named in the header."""
from __future__ import annotations

import copy

import pytest

from tests.platform_helpers import platform_refs, project_with_stack, stack_config
from tests.test_bad_input import changed, pool_changed, problems_for
from trnctl.render import run_program
from workloads.errors import WorkloadConfigError

W = "trn-workloads:"


def problem_lines(message: str) -> list[str]:
    return [line for line in message.splitlines() if line.startswith("  - ")]


def test_misspelt_required_key_is_one_message_with_did_you_mean(tmp_path):
    pools = copy.deepcopy(stack_config("platform", "dev-usw2")["trn-platform:nodePools"])
    pools[0]["maxNode"] = pools[0].pop("maxNodes")
    lines = problem_lines(problems_for(tmp_path, changed("nodePools", pools)))
    assert lines == ["  - nodePools[0].maxNode: unknown key; did you mean maxNodes? (a required key; rename maxNode to maxNodes)"]


def test_misspelt_optional_key_says_did_you_mean(tmp_path):
    message = problems_for(tmp_path, changed("fsx", {"storageCapacityGib": 1200}))
    assert "fsx.storageCapacityGib: unknown key; did you mean storageCapacityGiB?" in message


def test_quoted_int_says_remove_the_quotes(tmp_path):
    lines = problem_lines(problems_for(tmp_path, pool_changed(0, maxNodes="4")))
    assert lines == ["  - nodePools[0].maxNodes: expected int, got str '4'; remove the quotes (maxNodes: 4)"]


def test_unquoted_version_says_quote_it_as_written_not_the_number_yaml_made(tmp_path):
    message = problems_for(tmp_path, changed("kubernetesVersion", 1.30))
    assert "quote it exactly as written in the stack file" in message
    assert '"1.3"' not in message  # the number YAML made of 1.30, which would then be refused
    assert len(problem_lines(message)) == 1


def test_instance_type_of_another_family_is_one_message_with_both_fixes(tmp_path):
    lines = problem_lines(problems_for(tmp_path, pool_changed(0, instanceTypes=["inf2.xlarge"])))
    assert lines == ["  - nodePools[0].instanceTypes[0]: 'inf2.xlarge' is not allowed for family trn1 (it is a type of "
                     "family inf2); allowed values: trn1.2xlarge, trn1.32xlarge; or set family: inf2"]


def test_platform_config_errors_name_the_stack_file(tmp_path):
    assert problems_for(tmp_path, pool_changed(0, maxNodes="4")).startswith("invalid config for stack 'bad' (Pulumi.bad.yaml):")


def _workload_error(tmp_path, base: str, mutate) -> str:
    cfg = copy.deepcopy(stack_config("workloads", base))
    mutate(cfg)
    project = project_with_stack(tmp_path, "workloads", "bad", cfg)
    refs = platform_refs()
    if base == "llm-serve-usw2":
        refs = None  # the finetune reference is resolved (or refused) by the render itself
    with pytest.raises(WorkloadConfigError) as err:
        run_program(project, "bad", stack_references=refs)
    assert getattr(err.value, "registered_resources", 0) == 0
    return str(err.value)


def test_all_workload_problems_at_once_naming_the_stack_and_its_file(tmp_path):
    def two_mistakes(cfg):
        cfg[W + "version"] = "one"
        cfg[W + "compile"]["batchSize"] = "x"

    message = _workload_error(tmp_path, "compile-usw2", two_mistakes)
    assert message.startswith("invalid config for workload stack 'bad' (workloads/Pulumi.bad.yaml):")
    assert problem_lines(message) == ["  - version: must be a semantic version such as 1.2.0 (it tags the image)",
                                      "  - compile.batchSize: expected int, got str 'x'"]


def test_wrong_finetune_stack_is_labelled_with_its_key(tmp_path):
    message = _workload_error(tmp_path, "llm-serve-usw2",
                              lambda cfg: cfg[W + "llmServe"]["model"].update(finetuneStack="organization/trn-workloads/nope"))
    assert message.startswith("invalid config for workload stack 'bad' (workloads/Pulumi.bad.yaml):")
    [line] = problem_lines(message)
    assert line.startswith("  - llmServe.model.finetuneStack: 'organization/trn-workloads/nope' names workload stack 'nope', "
                           "which does not exist")


# --------------------------------------------------------------------------- item 6: pools that would work


def test_an_unknown_pool_lists_only_the_pools_that_would_work(tmp_path):
    message = _workload_error(tmp_path, "compile-usw2", lambda cfg: cfg[W + "compile"].update(pool="nope"))
    assert ("compile.pool: pool 'nope' does not exist in platform stack organization/trn-platform/dev-usw2; "
            "allowed values: inf2, trn1-efa, trn1-single") in message  # not cpu: compile needs an accelerator


def test_a_workload_no_pool_of_the_platform_can_run_is_told_so_and_why(tmp_path):
    def on_trn2_platform(cfg):
        cfg.update({"aws:region": "us-east-2", W + "platformStack": "organization/trn-platform/dev-trn2-use2"})
        cfg[W + "compile"]["pool"] = "nope"
        del cfg[W + "compile"]["serve"]

    cfg = copy.deepcopy(stack_config("workloads", "compile-usw2"))
    on_trn2_platform(cfg)
    project = project_with_stack(tmp_path, "workloads", "bad", cfg)
    with pytest.raises(WorkloadConfigError) as err:
        run_program(project, "bad", stack_references=platform_refs("dev-trn2-use2"))
    [line] = problem_lines(str(err.value))
    assert "allowed values" not in line and "cpu" not in line  # was: choose from cpu, trn2-block, trn2-efa
    assert line.endswith("no pool of platform stack organization/trn-platform/dev-trn2-use2 can run this workload: it "
                         "needs the xla Neuron track (trn1, trn1n, inf2) and the platform's accelerator pools are "
                         "trn2-block (native track), trn2-efa (native track); add a trn1, trn1n, inf2 pool to the "
                         "platform, or set platformStack to a platform stack that has one")
