"""How the runner (trnctl/rehearse/runner.py) runs a Volcano Job (titan-pretrain): its master and worker pods exactly
as `trnctl.operators.volcano.pods` builds them (the pytorch plugin's MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK, the
svc plugin's hostname, subdomain, VC_*_HOSTS env and /etc/volcano files), every pod started at once as the gang is,
each running the Job's real `torchrun` (static rendezvous at the master's TCPStore, gloo) on the CPU path; stop
(the Job's pods deleted, as Volcano's RestartJob or a delete would) and start again: the trainer resumes from its
newest checkpoint on FSx. A mixin of runner.Rehearsal, which dispatches every Volcano Job of a step to `run_job`.
What the rehearsal changes for titan (tiny config, one process per pod, the image over an empty base) is in
trnctl/rehearse/overlay.py.
"""
from __future__ import annotations

import time

from trnctl import operators
from trnctl.operators import OWNER_ANNOTATION, volcano
from trnctl.rehearse.results import PodResult, RehearsalError


class VolcanoJobSteps:
    """Mixin of runner.Rehearsal: a Volcano Job's gang at once, to completion or to its first failure."""

    _volcano_retries: dict[str, int]  # status.retryCount per Job (runner.Rehearsal sets it up)

    def run_job(self, job: dict, index: int, *, until=None) -> list[PodResult]:
        """Every pod of the Job at once (the gang), then to completion (every container exited 0), to the first
        failure (named per pod), or until `until()` is true while they run (then left running). A Job Volcano
        refuses (or whose plugins do nothing) makes no pods: one result named after the Job says why."""
        results = self.start_job(job, index)
        return self.await_job(job, results, until=until)

    def start_job(self, job: dict, index: int) -> dict[str, PodResult]:
        owner = operators.describe(job)
        refused = volcano.admission_problems(job, self.stack.ctx, self.objects)
        if refused:
            name = f"(no pods of {owner})"
            return {name: PodResult(name, index, owner, problem="; ".join(refused))}
        pods = volcano.pods(job, self.stack.ctx)
        self._deadline = time.monotonic() + self.step_timeout
        results = {p["metadata"]["name"]: PodResult(p["metadata"]["name"], index, owner) for p in pods}
        self._start_pods(pods, results, self._deadline)
        self._refresh_hosts()
        return results

    def await_job(self, job: dict, results: dict[str, PodResult], *, until=None) -> list[PodResult]:
        pending = [name for name, r in results.items() if not r.problem and any(c.pod == name for c in self.containers)]
        while pending and not any(r.problem for r in results.values()):
            for name in list(pending):
                codes = [c.proc.poll() for c in self.containers if c.pod == name]
                failed = next((code for code in codes if code not in (None, 0)), None)
                if failed is not None:
                    results[name].exit_code = failed
                    results[name].problem = f"container exited with {failed}"
                    results[name].log_tail = self._log_tail(name)
                    pending.remove(name)
                elif codes and all(code == 0 for code in codes):
                    results[name].exit_code = 0
                    pending.remove(name)
            if not pending or (until is not None and until()):
                break
            if time.monotonic() > self._deadline:
                for name in pending:
                    results[name].problem = f"not complete within the step bound of {self.step_timeout:.0f}s"
                    results[name].log_tail = self._log_tail(name)
                break
            time.sleep(0.5)
        return list(results.values())

    def pod_lost(self, job: dict, index: int, pod_name: str, event: str) -> dict[str, PodResult]:
        """What Volcano does when a pod of the Job fails (`PodFailed`) or is deleted by anyone but its controller
        (`PodEvicted`: the watchdog's delete): the Job's policy for the pod's task (volcano.policy_action). For
        RestartJob, every pod of the gang is killed and created again (the new pods' results, to await) while
        restarts are left (volcano.restarts_left); anything else is refused, naming the action."""
        pod = next(p for p in self.all_pods if p["metadata"]["name"] == pod_name)
        action = volcano.policy_action(job, volcano.task_of(pod), event)
        retries = self._volcano_retries.get(operators.describe(job), 0)
        if action != "RestartJob" or not volcano.restarts_left(job, retries):
            raise RehearsalError(f"{operators.describe(job)}: {event} of {pod_name} leads to {action} after "
                                 f"{retries} restarts: the gang is not restarted")
        self._volcano_retries[operators.describe(job)] = retries + 1
        self.stop_job(job)
        return self.start_job(job, index)

    def stop_job(self, job: dict) -> None:
        """Delete the Job's pods (every pod it owns)."""
        owner = operators.describe(job)
        self.stop_pods(lambda pod: pod["metadata"].get("annotations", {}).get(OWNER_ANNOTATION) == owner)
