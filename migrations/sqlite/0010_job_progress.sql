-- Where a paged job got to: discovery records the next page of the application's connections
-- with each page it registers, in the same transaction, so an attempt that fails on page 60
-- (a 5xx) resumes at page 60 instead of page 1. Without it, a discovery over 100 pages against
-- an API failing 2 % of calls fails 87 % of its attempts and dies after max_attempts.
ALTER TABLE jobs ADD COLUMN progress INTEGER;
