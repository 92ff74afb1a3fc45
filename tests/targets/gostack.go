// gostack N: four goroutines each call work(i, g) N times; every thousandth call recurses
// 51 deep through grow, whose frames make the goroutine's stack grow (Go moves it, then
// runs the function again from its first instruction). Prints the sum of work's results.
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
)

//go:noinline
func work(a, b int) int {
	if a%1000 == 999 {
		grow(50)
	}
	return a*3 + b
}

//go:noinline
func grow(n int) int {
	var buf [256]byte
	buf[n%256] = byte(n)
	if n == 0 {
		return int(buf[0])
	}
	return grow(n-1) + int(buf[n%256])
}

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	var wg sync.WaitGroup
	sums := make([]int, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < n; i++ {
				sums[g] += work(i, g)
			}
		}(g)
	}
	wg.Wait()
	fmt.Println(sums[0] + sums[1] + sums[2] + sums[3])
}
