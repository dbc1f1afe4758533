-- A lock whose pairing answer was lost (its Wi-Fi dropped as the answer came back, a 503 before a COMMIT's answer was
-- looked up) sent the same code again and was refused (401 invalid_provisioning_code): it could not pair until the
-- owner issued a new code, while the app showed it paired (attack run 37). A pairing sent again with the same code,
-- signing key and TLS key, while the code would still be valid and the credential it made is live, is now answered
-- with that credential and a certificate for it. Kept beside the credential: the SHA-256 of the code that made it
-- (as provisioning_codes keeps it) and of the CSR's public key (DER SubjectPublicKeyInfo): only the lock that holds
-- that key can use a certificate for it. Credentials paired before this have neither and are never repeated.
-- Nullable columns without a default are added without rewriting the table, and their checks NOT VALID without
-- scanning it (a review measured 0.5 s on 3M rows with the checks inline, every lock's signed request waiting):
-- the rows already there are NULL, which the checks allow.
ALTER TABLE lock_credentials ADD COLUMN paired_with bytea, ADD COLUMN csr_key_sha256 bytea;
ALTER TABLE lock_credentials
    ADD CONSTRAINT lock_credentials_paired_with_check CHECK (paired_with IS NULL OR length(paired_with) = 32) NOT VALID,
    ADD CONSTRAINT lock_credentials_csr_key_sha256_check
        CHECK (csr_key_sha256 IS NULL OR length(csr_key_sha256) = 32) NOT VALID;
