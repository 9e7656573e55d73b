"""What training and inference share: builders (config -> objects), precision, seeding, the step
and evaluation loop, learning-rate schedules, previews."""
