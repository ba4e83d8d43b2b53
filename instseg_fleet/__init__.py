"""instseg_fleet: pre-label many recorded bags and choose the frames worth an operator's time, on Ray.

`instseg-fleet prelabel BAGS... --out DIR` (instseg_fleet.cli) writes, per bag, a studio session with proposals
that `instseg-studio BAG --out DIR/<bag>` opens, and a COCO file of the predictions ([fleet](../docs/fleet.md)).
The work itself (instseg_fleet.work) does not know Ray: instseg_fleet.cluster runs it in Ray actors, and the
benchmark runs the same functions in a plain loop. instseg_fleet.mining chooses the frames.
"""
