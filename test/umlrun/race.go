//go:build race

package umlrun

// raceEnabled: this binary has the race detector, whose runtime cannot run in a
// guest (it maps shadow memory at addresses above UML's process address space).
const raceEnabled = true
