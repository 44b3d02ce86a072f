"""Crash, back-pressure and bad-input drills of the telemetry stack (``make chaos``).

``python -m chaos`` brings up a second stack under the chaos profile of
:mod:`runners.profiles` (own run directory, ports and names), runs the scenarios of
:mod:`chaos.scenarios` under steady load from :mod:`chaos.traffic`, checks
every acknowledged event with :mod:`chaos.verify`, fuzzes every entry point
with :mod:`chaos.badinput`, prints the results table and stops the stack.
See docs/reliability.md.
"""
