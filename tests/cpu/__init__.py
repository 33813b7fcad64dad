"""The CPU kernel tables below the modules: the vectorised and the portable builds."""
