"""The stages of a round, one module each, with files in the round's directory between them (see each docstring).

- :mod:`~sgpo.pipeline.stages.generate`: prompts -> responses sampled from the policy pi_t (SSAPO Alg. 1 step 2)
- :mod:`~sgpo.pipeline.stages.annotate`: responses -> pairs and margins, via a judge (step 2's self-annotation)
- :mod:`~sgpo.pipeline.stages.solve`: margins -> the follower's worst case (step 3)
- :mod:`~sgpo.pipeline.stages.update`: pairs and worst case -> the next policy (step 4; round 0's DPO)
- :mod:`~sgpo.pipeline.stages.evaluate`: the policy against the starting model, by the gold judge
- :mod:`~sgpo.pipeline.stages.report`: the run's tables and plots

:mod:`sgpo.pipeline.runner` runs them round after round.
"""
