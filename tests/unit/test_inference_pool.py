"""How `infer` and `evaluate` size their pool of model replicas."""

from sed_ray.config import InferenceOptions
from sed_ray.eval.infer import actor_pool


def test_explicit_sizes_are_asked_for_as_given_so_an_autoscaler_can_add_them():
    # an autoscaling cluster with no GPU node yet: four one-GPU replicas are requested all the same
    assert actor_pool(InferenceOptions(actors=4, gpus_per_actor=1), {"CPU": 8}) == (4, 1.0, 1.0)
    assert actor_pool(InferenceOptions(actors=2, gpus_per_actor=0, cpus_per_actor=4), {"CPU": 8, "GPU": 8}) == (2, 0.0, 4.0)


def test_defaults_use_what_is_free_now_not_what_a_training_job_holds():
    assert actor_pool(InferenceOptions(), {"CPU": 64, "GPU": 3}) == (3, 1.0, 1.0)  # 5 of 8 GPUs busy training
    assert actor_pool(InferenceOptions(), {"CPU": 64, "GPU": 0.5}) == (2, 0.0, 1.0)  # no whole GPU free: CPUs
    assert actor_pool(InferenceOptions(gpus_per_actor=0.5), {"CPU": 64, "GPU": 2}) == (4, 0.5, 1.0)
    assert actor_pool(InferenceOptions(), {"CPU": 1}) == (1, 0.0, 1.0)


def test_bad_pool_options_are_named():
    problems = InferenceOptions(actors=0, gpus_per_actor=-1, cpus_per_actor=0, group_window=0).problems()
    assert {p.split(":")[0] for p in problems} == {"actors", "gpus_per_actor", "cpus_per_actor", "group_window"}
