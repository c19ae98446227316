package matrixside

// trackedSizes returns the number of entries of each table of the side
// keyed by what the homeserver or remote users send.
func trackedSizes(s *Side) map[string]int {
	s.out.mu.Lock()
	out, queued := s.out.ghosts.len(), s.out.ready.Len()+len(s.out.delayed)
	s.out.mu.Unlock()
	s.in.mu.Lock()
	users := s.in.last.len()
	s.in.mu.Unlock()
	s.rooms.mu.Lock()
	rooms := s.rooms.byRoom.len()
	s.rooms.mu.Unlock()
	s.ghosts.mu.Lock()
	registered := s.ghosts.registered.len()
	s.ghosts.mu.Unlock()
	return map[string]int{
		"outbox ghosts":     out,
		"outbox queue":      queued,
		"inbound users":     users,
		"rooms":             rooms,
		"registered ghosts": registered,
	}
}
