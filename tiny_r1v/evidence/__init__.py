"""Evidence for the recipe's claims: the common base the length-control methods start from
(`base`), grids of training runs over it (`sweep`) and their reports (`sweep_report`)."""
