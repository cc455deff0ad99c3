package resources

import (
	"fmt"
	"slices"
	"testing"
)

func TestChunks(t *testing.T) {
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("i-%04d", i)
		}
		return out
	}
	tests := []struct {
		n, size int
		want    []int // chunk lengths
	}{
		{0, 200, nil},
		{1, 200, []int{1}},
		{200, 200, []int{200}},
		{201, 200, []int{200, 1}},
		{1000, 200, []int{200, 200, 200, 200, 200}},
		{999, 200, []int{200, 200, 200, 200, 199}},
		{5, 2, []int{2, 2, 1}},
	}
	for _, tt := range tests {
		in := ids(tt.n)
		got := Chunks(in, tt.size)
		var lens []int
		var joined []string
		for _, c := range got {
			lens = append(lens, len(c))
			joined = append(joined, c...)
		}
		if !slices.Equal(lens, tt.want) || !slices.Equal(joined, in) {
			t.Errorf("Chunks(%d ids, %d): lengths %v, want %v (order kept: %v)", tt.n, tt.size, lens, tt.want, slices.Equal(joined, in))
		}
	}
	defer func() {
		if recover() == nil {
			t.Errorf("Chunks with size 0 did not panic")
		}
	}()
	Chunks([]string{"x"}, 0)
}

func TestUniqueDropsEmptyAndDuplicateIDs(t *testing.T) {
	got := unique([]string{"i-2", "", "i-1", "i-2", "i-3", ""})
	if want := []string{"i-1", "i-2", "i-3"}; !slices.Equal(got, want) {
		t.Errorf("unique = %v, want %v", got, want)
	}
	if got := unique(nil); len(got) != 0 {
		t.Errorf("unique(nil) = %v", got)
	}
}
