//! Process lifetime: a primary killed outright, workers with children, failed spawns.
