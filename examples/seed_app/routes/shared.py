# shared dictionary for storing session data
state_cache = {}
