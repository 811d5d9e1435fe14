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
