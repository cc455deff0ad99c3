//go:build !race

package umlrun

const raceEnabled = false
