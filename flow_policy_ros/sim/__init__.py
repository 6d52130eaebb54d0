"""PyBullet simulation of the KUKA LBR iiwa: arm, kinematics, tasks, scripted experts, episodes.

``arm`` (physics and position control), ``kinematics`` (FK/IK/collision on a private copy),
``tasks`` (reach, reach_around: sampling and route classification), ``experts`` (IK +
quintic trajectories), ``env`` (closed-loop episodes with monitoring and recording),
``rollout`` (recorded expert episodes), ``collect`` (the ``flow-policy collect`` verb).
No torch here.
"""
