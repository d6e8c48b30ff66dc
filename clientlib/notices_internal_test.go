package clientlib

import (
	"slices"
	"testing"
)

// TestInstanceKnowledge follows what the client concludes from instance
// announcements and from the instance named in lock replies, which reach
// it in any order: a reply from an instance known to be gone must not make
// it current again, nor cost the locks of the instance that serves.
func TestInstanceKnowledge(t *testing.T) {
	type event struct {
		kind string // "started", "stopped", or "reply": a grant by id arrives
		id   string
	}
	tests := []struct {
		name    string
		events  []event
		held    []string // instances of the grants still held at the end
		refused []string // instances of the grants refused on arrival
		wakes   int      // times waiting Lock calls are told to ask again
	}{
		{name: "one instance",
			events: []event{{"reply", "A"}, {"reply", "A"}},
			held:   []string{"A", "A"}},
		{name: "restart announced",
			events: []event{{"reply", "A"}, {"stopped", "A"}, {"started", "B"}, {"reply", "B"}},
			held:   []string{"B"}, wakes: 1},
		{name: "silent death, then a start",
			events: []event{{"reply", "A"}, {"started", "B"}, {"reply", "B"}},
			held:   []string{"B"}, wakes: 1},
		{name: "reply of the new instance before its announcement",
			events: []event{{"reply", "A"}, {"reply", "B"}, {"started", "B"}},
			held:   []string{"B"}, wakes: 1},
		{name: "late reply of a gone instance",
			events:  []event{{"reply", "A"}, {"started", "B"}, {"reply", "B"}, {"reply", "A"}},
			held:    []string{"B"},
			refused: []string{"A"}, wakes: 1},
		{name: "late reply after a stop",
			events:  []event{{"reply", "A"}, {"stopped", "A"}, {"reply", "A"}},
			refused: []string{"A"}},
		{name: "stop of another instance",
			events: []event{{"reply", "A"}, {"stopped", "X"}},
			held:   []string{"A"}},
		{name: "first reply of a new instance before its announcement",
			// A wait may be parked at a killed instance the client never
			// heard of: the announcement wakes it.
			events: []event{{"reply", "B"}, {"started", "B"}},
			held:   []string{"B"}, wakes: 1},
		{name: "first reply after a stop, before the announcement",
			events: []event{{"reply", "A"}, {"stopped", "A"}, {"reply", "B"}, {"started", "B"}},
			held:   []string{"B"}, wakes: 1},
		{name: "start announced before any reply",
			events: []event{{"started", "B"}, {"reply", "B"}},
			held:   []string{"B"}, wakes: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Client{held: make(map[*Lock]struct{}), pending: make(map[*pending]struct{})}
			var refused []string
			wakes := 0
			for _, ev := range tt.events {
				woken := false // a waiting lock request is told to ask again
				wait := &pending{waits: true, cancel: func() { woken = true }}
				c.pending[wait] = struct{}{}
				switch ev.kind {
				case "started":
					c.instanceServesLocked(ev.id, true)
				case "stopped":
					c.instanceStoppedLocked(ev.id)
				case "reply": // as register does
					if slices.Contains(c.goneInstances, ev.id) {
						refused = append(refused, ev.id)
						break
					}
					c.instanceServesLocked(ev.id, false)
					c.held[&Lock{instance: ev.id}] = struct{}{}
				}
				delete(c.pending, wait)
				if woken {
					wakes++
				}
			}
			var held []string
			for l := range c.held {
				held = append(held, l.instance)
			}
			slices.Sort(held)
			if !slices.Equal(held, tt.held) || !slices.Equal(refused, tt.refused) || wakes != tt.wakes {
				t.Errorf("held %v, refused %v, %d wakes; want %v, %v, %d", held, refused, wakes, tt.held, tt.refused, tt.wakes)
			}
		})
	}
}
