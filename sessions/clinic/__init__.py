"""The clinic side: the clinic's keys, its database of patients' records, its views and exports.

Everything here runs on the clinic's computer, never on the patient's. Its state lives in the
clinic's own data directory (``paths.clinic_root``), apart from any patient's home.
"""
