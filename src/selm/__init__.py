"""selm: the SELM reproduction suite (see README.md). Entry points live in selm.cli and the stage modules."""
