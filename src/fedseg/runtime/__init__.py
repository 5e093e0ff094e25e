"""Runtimes move weights between a compute plan and site trainers: in one process, or deployed."""
